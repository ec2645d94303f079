"""`DistributedDenoiser` on gloo CPU processes: same samples as one process, failures within the timeout.

Every multi-process test starts fresh processes (`forkserver`, never a fork of pytest itself) with
`MASTER_ADDR=127.0.0.1` and a free port. Each child writes its result to a file; the parent joins every
child with a deadline and kills whatever is left, so a bug can fail these tests but never hang them. The
failure scenarios run concurrently (one process group each) to keep the module fast.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from parapolicy.policy.diffusion.picard import sample_picard
from parapolicy.policy.diffusion.schedules import make_alphas_cumprod, make_step_table, make_timesteps
from parapolicy.policy.diffusion.sequential import draw_noise, sample_sequential
from parapolicy.policy.model.networks import ConditionalUnet1d
from parapolicy.policy.model.pretrained import load_policy
from parapolicy.policy.runtime import distributed
from parapolicy.policy.runtime.distributed import (
    DistInfo,
    DistributedDenoiser,
    DistributedDenoiserError,
    init_distributed,
    shutdown_distributed,
)

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "artifacts" / "golden_tiny"
AC = make_alphas_cumprod("squaredcos_cap_v2", 100)
FAIL_TIMEOUT_S = 5.0  # process-group timeout of the failure scenarios
HEARTBEAT_TIMEOUT_S = 3.0  # process-group timeout of the idle (heartbeat) scenario
EQUIV_TIMEOUT_S = 30.0
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


# --------------------------------------------------------------------------------------------------
# denoisers every rank builds identically
def closed_form(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    """Row-wise elementwise (so bitwise independent of the batch split), nonlinear in x, t and cond."""
    view = (-1,) + (1,) * (x.dim() - 1)
    out = 0.5 * torch.tanh(x) + 1e-3 * t.to(x.dtype).view(view) * torch.sin(x)
    if cond is not None:
        out = out + 0.1 * cond[:, :1].to(x.dtype).view(view)
    return out


def tiny_unet() -> ConditionalUnet1d:
    torch.manual_seed(0)
    net = ConditionalUnet1d(input_dim=2, global_cond_dim=4, diffusion_step_embed_dim=16, down_dims=(16, 32))
    return net.eval()


def split_in_two(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`fn` on the two `tensor_split` halves of the batch in turn (the rows each of 2 ranks evaluates)."""

    def denoise(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        cs = cond.tensor_split(2) if cond is not None else (None, None)
        return torch.cat(
            [fn(a, b, c) for a, b, c in zip(x.tensor_split(2), t.tensor_split(2), cs, strict=True)]
        )

    return denoise


def failing_on_call(n: int, action: str) -> Callable[..., torch.Tensor]:
    """A closed-form denoiser that dies ("exit"), hangs ("hang") or raises ("raise") on its n-th call."""
    calls = [0]

    def denoise(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == n:
            if action == "exit":
                os._exit(17)
            if action == "hang":
                time.sleep(600)
            if action == "raise":
                raise ValueError("boom from the replica")
        return closed_form(x, t, cond)

    return denoise


def problem(kind: str, K: int, B: int, seed: int = 0) -> tuple:
    table = make_step_table(AC, make_timesteps(100, K), kind=kind)
    gen = torch.Generator().manual_seed(seed)
    x_T, noise = draw_noise(table, (B, 16, 2), gen)
    cond = torch.randn(B, 4, generator=gen)
    return table, x_T, noise, cond


# --------------------------------------------------------------------------------------------------
# scenarios: run in the child processes, one function for every role; each returns a picklable dict
def scenario_equivalence(rank: int) -> dict[str, Any]:
    info = init_distributed("gloo", EQUIV_TIMEOUT_S)  # the group outlives the three denoisers below
    out: dict[str, Any] = {"info": [info.rank, info.world_size, info.backend]}
    net = tiny_unet()
    if rank != 0:
        with DistributedDenoiser(closed_form, timeout_s=EQUIV_TIMEOUT_S) as dd:
            out["served"] = [dd.serve_forever()]
        with DistributedDenoiser(net, timeout_s=EQUIV_TIMEOUT_S) as dd:
            out["served"].append(dd.serve_forever())
        policy = load_policy(GOLDEN)
        with DistributedDenoiser(policy.local_denoise, timeout_s=EQUIV_TIMEOUT_S) as dd:
            out["served"].append(dd.serve_forever())
        out["initialized_before_shutdown"] = dist.is_initialized()
        shutdown_distributed()
        out["initialized_after"] = dist.is_initialized()
        return out

    pairs: dict[str, tuple[torch.Tensor, torch.Tensor, str]] = {}
    rows: list[int] = []

    def recording(dd: DistributedDenoiser) -> Callable[..., torch.Tensor]:
        def denoise(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
            rows.append(x.shape[0])
            return dd(x, t, cond)

        return denoise

    calls = []
    with DistributedDenoiser(closed_form, timeout_s=EQUIV_TIMEOUT_S) as dd:
        out["world_size"] = dd.world_size
        gen = torch.Generator().manual_seed(1)
        for n in (0, 1, 2, 3, 5, 8):  # N = 0, N < world size, odd, even
            x, t = torch.randn(n, 16, 2, generator=gen), torch.randint(0, 100, (n,), generator=gen)
            cond = torch.randn(n, 4, generator=gen)
            pairs[f"direct N={n}"] = (dd(x, t, cond), closed_form(x, t, cond), "bitwise")
        x, t = torch.randn(3, 16, 2, generator=gen, dtype=torch.float64), torch.randint(0, 100, (3,))
        pairs["direct float64, cond None"] = (dd(x, t, None), closed_form(x, t, None), "bitwise")
        try:
            dd(torch.zeros(3, 16, 2), torch.zeros(2, dtype=torch.long), None)
            out["bad_t"] = "no error"
        except ValueError as exc:
            out["bad_t"] = str(exc)
        x, t = torch.randn(4, 16, 2, generator=gen), torch.randint(0, 100, (4,), generator=gen)
        pairs["after rejected input"] = (dd(x, t, None), closed_form(x, t, None), "bitwise")

        den = recording(dd)
        for kind, B, window, tol in (("ddpm", 1, 5, 0.0), ("ddpm", 3, 4, 0.1), ("ddim", 3, 3, 0.0)):
            table, x_T, noise, cond = problem(kind, 12, B)
            got = sample_picard(den, x_T, table, noise, cond, window=window, tol=tol)
            ref = sample_picard(closed_form, x_T, table, noise, cond, window=window, tol=tol)
            pairs[f"picard {kind} B={B} p={window} tol={tol}"] = (got.trajectory, ref.trajectory, "bitwise")
            out[f"iterations {kind} B={B}"] = [got.iterations, ref.iterations]
        for B in (1, 3):
            table, x_T, noise, cond = problem("ddpm", 12, B)
            got = sample_sequential(den, x_T, table, noise, cond)
            pairs[f"sequential B={B}"] = (
                got.sample,
                sample_sequential(closed_form, x_T, table, noise, cond).sample,
                "bitwise",
            )
        calls.append(dd.calls)

    with DistributedDenoiser(net, timeout_s=EQUIV_TIMEOUT_S) as dd, torch.no_grad():
        split = split_in_two(net)  # the same 2-way split, evaluated in this process
        table, x_T, noise, cond = problem("ddpm", 10, 3)
        got = sample_picard(dd, x_T, table, noise, cond, window=4, tol=0.0)
        pairs["unet picard vs same split"] = (
            got.trajectory,
            sample_picard(split, x_T, table, noise, cond, window=4, tol=0.0).trajectory,
            "bitwise",
        )
        pairs["unet picard vs one call"] = (
            got.trajectory,
            sample_picard(net, x_T, table, noise, cond, window=4, tol=0.0).trajectory,
            "close",
        )
        got = sample_sequential(dd, x_T, table, noise, cond)
        pairs["unet sequential vs same split"] = (
            got.sample,
            sample_sequential(split, x_T, table, noise, cond).sample,
            "bitwise",
        )
        calls.append(dd.calls)

    policy = load_policy(GOLDEN)  # the documented recipe: set_denoiser on rank 0
    with DistributedDenoiser(policy.local_denoise, timeout_s=EQUIV_TIMEOUT_S) as dd:
        gen = torch.Generator().manual_seed(2)
        obs = {"obs": torch.rand(2, 2, 20, generator=gen) * 512}
        noise = draw_noise(policy.table, (2, 16, 2), gen)
        ref = policy.predict_action_chunk(obs, noise=noise)
        policy.set_denoiser(dd)
        got = policy.predict_action_chunk(obs, noise=noise)
        policy.set_denoiser(None)
        out["policy_rows"] = list(got.result.rows_per_call[:1])
        pairs["predict_action_chunk"] = (got.plan, ref.plan, "close")
        calls.append(dd.calls)
    out.update(pairs=pairs, rows=rows, calls=calls, initialized_before_shutdown=dist.is_initialized())
    shutdown_distributed()
    out["initialized_after"] = dist.is_initialized()
    return out


def _expect_failure(fn: Callable[[], Any]) -> dict[str, Any]:
    start = time.monotonic()
    try:
        fn()
    except DistributedDenoiserError as exc:
        return {
            "error": str(exc),
            "elapsed": time.monotonic() - start,
            "initialized_after": dist.is_initialized(),
        }
    return {"error": None, "elapsed": time.monotonic() - start}


def scenario_peer_fails(rank: int, action: str) -> dict[str, Any]:
    """Rank 1's replica dies / hangs / raises on its 2nd call; rank 0 must fail within the timeout."""
    local = failing_on_call(2, action) if rank == 1 else closed_form
    dd = DistributedDenoiser(local, backend="gloo", timeout_s=FAIL_TIMEOUT_S)
    if rank != 0:
        result = _expect_failure(dd.serve_forever)
        result["calls"] = dd.calls
        return result
    x, t, cond = torch.randn(5, 16, 2), torch.arange(5), torch.randn(5, 4)
    first_ok = torch.equal(dd(x, t, cond), closed_form(x, t, cond))
    result = _expect_failure(lambda: dd(x, t, cond))
    result["first_ok"] = first_ok
    again = _expect_failure(lambda: dd(x, t, cond))  # a failed denoiser stays failed, at once
    result["again_error"], result["again_elapsed"] = again["error"], again["elapsed"]
    dd.close()  # must not raise
    result["failed"] = dd.failed
    return result


def scenario_main_fails(rank: int, action: str) -> dict[str, Any]:
    """Rank 0 dies (or freezes, heartbeat included) after one call; rank 1 must fail within the timeout."""
    dd = DistributedDenoiser(closed_form, backend="gloo", timeout_s=FAIL_TIMEOUT_S)
    if rank != 0:
        result = _expect_failure(dd.serve_forever)
        result["calls"] = dd.calls
        return result
    dd(torch.randn(3, 16, 2), torch.arange(3), None)
    if action == "exit":
        os._exit(13)
    os.kill(os.getpid(), signal.SIGSTOP)  # a true hang: every thread stops; the parent kills us
    return {}


def scenario_idle(rank: int) -> dict[str, Any]:
    """Rank 0 idles for 2.5 timeouts between calls; the heartbeat keeps the serving rank waiting."""
    with DistributedDenoiser(closed_form, backend="gloo", timeout_s=HEARTBEAT_TIMEOUT_S) as dd:
        if rank != 0:
            return {"served": dd.serve_forever(), "initialized_after": dist.is_initialized()}
        x, t = torch.randn(3, 16, 2), torch.arange(3)
        ok = [torch.equal(dd(x, t, None), closed_form(x, t, None))]
        time.sleep(2.5 * HEARTBEAT_TIMEOUT_S)
        ok.append(torch.equal(dd(x, t, None), closed_form(x, t, None)))
    return {"ok": ok, "initialized_after": dist.is_initialized()}


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "equivalence": scenario_equivalence,
    "peer_fails": scenario_peer_fails,
    "main_fails": scenario_main_fails,
    "idle": scenario_idle,
}


# --------------------------------------------------------------------------------------------------
# launcher
def child_entry(name: str, rank: int, world: int, port: int, out_dir: str, kwargs: dict[str, Any]) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    try:
        result = SCENARIOS[name](rank, **kwargs)
    except BaseException as exc:  # report, don't hide: the parent prints it
        result = {"crash": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    path = Path(out_dir) / f"rank{rank}.pt"
    torch.save(result, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class GroupRun:
    """Outcome of one process group: each rank's result (absent if it died or was killed) and exit code."""

    results: dict[int, dict[str, Any]]
    exitcodes: list[int | None]
    wall_s: float


class Launch:
    """Start one process group's children now; `collect` joins them with a deadline and kills leftovers."""

    def __init__(self, name: str, world: int, port: int, out_dir: Path, **kwargs: Any) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir, self.start = out_dir, time.monotonic()
        ctx = mp.get_context("forkserver")
        # Children fork from one server that imported torch and this module once (spawning a fresh
        # interpreter per child costs ~1.5 s of CPU each); no-op if the server already runs.
        ctx.set_forkserver_preload(["torch", "torch.distributed", __name__])
        self.procs = [
            ctx.Process(target=child_entry, args=(name, r, world, port, str(out_dir), kwargs), daemon=True)
            for r in range(world)
        ]
        for p in self.procs:
            p.start()

    def collect(self, wait_ranks: tuple[int, ...], deadline_s: float, grace_s: float = 1.0) -> GroupRun:
        """Join `wait_ranks` until `deadline_s` after the start, the rest for `grace_s`, then kill."""
        end = self.start + deadline_s
        for r in wait_ranks:
            self.procs[r].join(max(0.0, end - time.monotonic()))
        for p in self.procs:
            p.join(grace_s if p.is_alive() else 0)
        wall = time.monotonic() - self.start
        self.kill()
        results = {}
        for r in range(len(self.procs)):
            path = self.out_dir / f"rank{r}.pt"
            if path.exists():
                results[r] = torch.load(path, weights_only=True)
                assert "crash" not in results[r], f"rank {r} crashed:\n{results[r].get('traceback')}"
        return GroupRun(results, [p.exitcode for p in self.procs], wall)

    def kill(self) -> None:
        """SIGKILL every child still alive (also works on a stopped one) and reap it."""
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(5)


# --------------------------------------------------------------------------------------------------
# in-process tests (world size 1, argument checks)
@pytest.fixture
def no_dist_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    assert not dist.is_initialized()


@pytest.mark.usefixtures("no_dist_env")
def test_world_size_one_is_a_plain_local_call() -> None:
    assert init_distributed("gloo") == DistInfo(0, 1, 0, torch.device("cpu"), None)
    x, t, cond = torch.randn(5, 16, 2), torch.arange(5), torch.randn(5, 4)
    with DistributedDenoiser(closed_form, backend="gloo") as dd:
        assert (dd.world_size, dd.rank, dd.is_main) == (1, 0, True)
        assert torch.equal(dd(x, t, cond), closed_form(x, t, cond))
        with pytest.raises(RuntimeError, match="serve_forever is for ranks > 0"):
            dd.serve_forever()
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="closed"):
        dd(x, t, cond)
    dd.close()  # idempotent


@pytest.mark.usefixtures("no_dist_env")
def test_world_size_one_samples_like_the_local_denoiser() -> None:
    table, x_T, noise, cond = problem("ddpm", 12, 3)
    with DistributedDenoiser(closed_form, backend="gloo") as dd:
        got = sample_picard(dd, x_T, table, noise, cond, window=4, tol=0.1)
    ref = sample_picard(closed_form, x_T, table, noise, cond, window=4, tol=0.1)
    assert torch.equal(got.trajectory, ref.trajectory)


def test_bad_environment_and_arguments(monkeypatch: pytest.MonkeyPatch, no_dist_env: None) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        init_distributed("gloo", timeout_s=0)
    with pytest.raises(ValueError, match="backend"):
        init_distributed("mpi")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="heartbeat_s"):
        DistributedDenoiser(closed_form, backend="gloo", timeout_s=1.0, heartbeat_s=2.0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        init_distributed("gloo")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2"):
        init_distributed("gloo")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        init_distributed("gloo")
    assert not dist.is_initialized()


# --------------------------------------------------------------------------------------------------
# two gloo processes
def test_two_processes_give_the_single_process_samples(tmp_path: Path) -> None:
    launch = Launch("equivalence", 2, free_ports(1)[0], tmp_path)
    try:
        run = launch.collect((0, 1), deadline_s=60)
    finally:
        launch.kill()
    assert run.exitcodes == [0, 0], run
    main, served = run.results[0], run.results[1]
    assert main["world_size"] == 2 and served["info"] == [1, 2, "gloo"]
    assert main["policy_rows"] == [2] and main["calls"][2] == 100  # every DDPM step went through rank 1
    assert main["bad_t"].startswith("t must have shape (3,)")
    for name, (got, ref, mode) in main["pairs"].items():
        if mode == "bitwise":
            assert torch.equal(got, ref), f"{name}: max |diff| {(got - ref).abs().max()}"
        else:  # different batch split than one call: the U-Net's float noise only
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5, msg=name)
    rows = set(main["rows"])
    assert 1 in rows and any(n % 2 == 1 and n > 1 for n in rows), rows  # N < world size and N odd
    assert served["served"] == main["calls"]  # every call reached rank 1 (N = 0 and rejected ones did not)
    assert main["initialized_before_shutdown"] and served["initialized_before_shutdown"]  # close() kept it
    assert not main["initialized_after"] and not served["initialized_after"]


@pytest.fixture(scope="module")
def failure_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, GroupRun]:
    """All failure scenarios at once, one process group each (so the module waits ~one timeout)."""
    root = tmp_path_factory.mktemp("dist_failures")
    specs = {  # name: (scenario, kwargs, ranks that must finish by themselves)
        "peer_exit": ("peer_fails", {"action": "exit"}, (0,)),
        "peer_hang": ("peer_fails", {"action": "hang"}, (0,)),
        "peer_raise": ("peer_fails", {"action": "raise"}, (0, 1)),
        "main_exit": ("main_fails", {"action": "exit"}, (0, 1)),
        "main_hang": ("main_fails", {"action": "hang"}, (1,)),
        "idle": ("idle", {}, (0, 1)),
    }
    ports = free_ports(len(specs))
    launches = {
        key: (Launch(name, 2, port, root / key, **kwargs), wait)
        for (key, (name, kwargs, wait)), port in zip(specs.items(), ports, strict=True)
    }
    try:
        return {key: launch.collect(wait, deadline_s=45) for key, (launch, wait) in launches.items()}
    finally:  # a crash reported by one group must not leave the others running
        for launch, _ in launches.values():
            launch.kill()


@pytest.mark.parametrize("action", ["exit", "hang", "raise"])
def test_serving_rank_failure_raises_on_rank_0_within_the_timeout(
    failure_runs: dict[str, GroupRun], action: str
) -> None:
    run = failure_runs[f"peer_{action}"]
    main = run.results[0]
    assert run.exitcodes[0] == 0, run
    assert main["first_ok"]
    assert main["error"] is not None, "rank 0 did not raise DistributedDenoiserError"
    # the timeout is what is tested, so the clock is needed: a hang ends after FAIL_TIMEOUT_S (5.0 s
    # measured), the others within 0.1 s; 6x the timeout leaves room for a loaded machine
    assert main["elapsed"] < 6 * FAIL_TIMEOUT_S, main
    assert not main["initialized_after"], "rank 0 did not destroy the process group"
    assert "rank 0 of 2" in main["error"] and "process group was destroyed" in main["error"]
    if action == "hang":
        assert f"timed out after {FAIL_TIMEOUT_S:g} s" in main["error"], main["error"]
        assert main["elapsed"] >= 0.8 * FAIL_TIMEOUT_S  # it was the timeout that ended the wait
    else:
        assert "closed its connection" in main["error"], main["error"]
    # the second call raises at once (~5 us measured; 0.5 s allowed)
    assert main["again_error"] and "already failed" in main["again_error"] and main["again_elapsed"] < 0.5
    assert main["failed"]
    if action == "exit":
        assert run.exitcodes[1] == 17
    if action == "raise":  # the raising rank reports its own exception and tears down too
        peer = run.results[1]
        assert "local denoiser raised (ValueError: boom from the replica)" in peer["error"], peer
        assert peer["calls"] == 1 and not peer["initialized_after"]


@pytest.mark.parametrize("action", ["exit", "hang"])
def test_rank_0_failure_ends_serve_forever_within_the_timeout(
    failure_runs: dict[str, GroupRun], action: str
) -> None:
    run = failure_runs[f"main_{action}"]
    assert run.exitcodes[1] == 0, run
    peer = run.results[1]
    assert peer["error"] is not None, "serve_forever did not raise DistributedDenoiserError"
    assert peer["calls"] == 1
    assert peer["elapsed"] < 6 * FAIL_TIMEOUT_S, peer  # as above: 5.0 s measured for a hang
    assert not peer["initialized_after"], "the serving rank did not destroy the process group"
    assert "rank 1 of 2: waiting for the next command from rank 0" in peer["error"]
    if action == "exit":
        assert run.exitcodes[0] == 13
        assert "closed its connection" in peer["error"], peer["error"]
    else:
        assert f"timed out after {FAIL_TIMEOUT_S:g} s" in peer["error"], peer["error"]


def test_heartbeat_keeps_an_idle_group_alive(failure_runs: dict[str, GroupRun]) -> None:
    run = failure_runs["idle"]
    assert run.exitcodes == [0, 0], run
    assert run.results[0]["ok"] == [True, True]
    assert run.results[1]["served"] == 2
    assert not run.results[0]["initialized_after"] and not run.results[1]["initialized_after"]


def test_torchrun_self_check() -> None:
    """The documented one-line smoke test, through the real launcher."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "parapolicy.policy.runtime.distributed",
        "--checkpoint",
        str(GOLDEN),
        "--backend",
        "gloo",
        "--steps",
        "10",
        "--window",
        "4",
        "--timeout-s",
        "30",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ENV_KEYS:
        env.pop(key, None)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun self-check timed out:\n{stdout}\n{stderr}")
    assert proc.returncode == 0, stdout + stderr
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, stdout
    report = json.loads(lines[0])
    assert report["world_size"] == 2 and report["backend"] == "gloo" and report["ok"], report
    assert report["max_abs_diff"] <= 1e-4


def test_a_header_round_trips_and_a_corrupt_one_is_refused() -> None:
    header = distributed._Header(
        distributed._CMD_CALL, 3, torch.float32, torch.int64, torch.float32, (16, 2), (4,)
    )
    packed = header.pack(torch.device("cpu"))  # (_HEADER_LEN,)
    assert distributed._Header.unpack(packed) == header
    for position, value in ((0, int(packed[0]) + 1), (1, 99)):  # the tag, then the command
        bad = packed.clone()
        bad[position] = value
        with pytest.raises(DistributedDenoiserError, match="malformed header"):
            distributed._Header.unpack(bad)


def test_a_serving_rank_refuses_a_local_output_of_the_wrong_shape() -> None:
    """(2, 16, 1) would broadcast into the (2, 16, 2) rows sent back: refused, naming both shapes."""
    dd = object.__new__(DistributedDenoiser)  # rank 1 of 2, without a process group
    dd._rank, dd._comm_device, dd.device = 1, torch.device("cpu"), torch.device("cpu")
    dd.local = lambda x, t, c: torch.zeros(x.shape[0], 16, 1)
    header = distributed._Header(distributed._CMD_CALL, 4, torch.float32, torch.int64, None, (16, 2), None)
    with pytest.raises(distributed._LocalError) as exc:
        dd._evaluate_slice(header, [2, 2], torch.zeros(4, 16, 2), torch.zeros(4, dtype=torch.long), None)
    assert "local denoiser returned (2, 16, 1), expected (2, 16, 2)" in str(exc.value.args[0])


@pytest.mark.usefixtures("no_dist_env")
def test_the_self_check_exits_non_zero_on_a_mismatch(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--algorithm", "sequential", "--steps", "3", "--batch", "1"]
    assert distributed.main(args) == 0
    assert distributed.main([*args, "--atol", "-1"]) == 1  # no difference is below -1
    assert '"ok": false' in capsys.readouterr().out
