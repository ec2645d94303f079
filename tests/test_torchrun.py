"""Training and evaluation across torchrun ranks (2 gloo processes on the CPU) equal one process.

Children start from a `forkserver` (never a fork of pytest) with `MASTER_ADDR=127.0.0.1` and a free port,
join a gloo group, run the library job and write what they report to a file; the parent joins them with
a deadline and kills leftovers, so a bug fails these tests but never hangs them. One CLI test runs
``python -m torch.distributed.run -m parapolicy.scripts.eval`` end to end.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from parapolicy.policy.config import PolicyConfig, UNetConfig
from parapolicy.policy.control.evaluation import EvalConfig
from parapolicy.policy.errors import ConfigError
from parapolicy.policy.eval import EvalJobConfig, run_eval
from parapolicy.policy.model.pretrained import load_policy, load_raw_weights
from parapolicy.policy.runtime.distributed import init_distributed, shutdown_distributed
from parapolicy.policy.train import TrainConfig, train

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo unavailable"
)
DEADLINE_S = 120.0
# measured, so they differ between runs: times, and how many plans took longer than the control period
# (the tiny policy's plans take about that long, so a loaded rank can miss one the single process did not)
TIME_FIELDS = ("eval_s", "eval_ep_s", "cpu_s", "total_deadline_misses")
EPISODE_TIME_FIELDS = ("deadline_misses",)


def tiny() -> PolicyConfig:
    return PolicyConfig(unet=UNetConfig(down_dims=(16, 32), diffusion_step_embed_dim=16))


def train_cfg(store: str, **kw: Any) -> TrainConfig:
    base = {"dataset_path": store, "policy": tiny(), "num_steps": 6, "batch_size": 16, "log_every": 2}
    base.update(val_every=3, checkpoint_every=3, warmup_steps=2, progress=False)
    return TrainConfig(**{**base, **kw})


def eval_cfg(policy_path: str) -> EvalJobConfig:
    ec = EvalConfig(n_episodes=5, batch_size=2, max_steps=24, max_videos=0, progress=False)
    return EvalJobConfig(policy_path=policy_path, eval=ec)


def cut(run: Path, to: Path) -> None:
    """A copy of ``run`` as if it had died after its first checkpoint (step 3)."""
    shutil.copytree(run, to, symlinks=True)
    shutil.rmtree(to / "checkpoints" / "000006")


# --------------------------------------------------------------------------------------------------
# what the ranks run
def scenario_train(rank: int, store: str, tmp: str, single: str) -> dict[str, Any]:
    tmp_path = Path(tmp)
    train(train_cfg(store), tmp_path / "two")
    if rank == 0:
        cut(tmp_path / "two", tmp_path / "two_cut")
        cut(Path(single), tmp_path / "one_cut")
    dist.barrier()
    train(train_cfg(store, resume=True), tmp_path / "two_cut")  # written under 2 ranks
    train(train_cfg(store, resume=True), tmp_path / "one_cut")  # written by one process
    return {}


def scenario_eval(rank: int, store: str, tmp: str, policy_path: str) -> dict[str, Any]:
    try:
        train(train_cfg(store, batch_size=15), Path(tmp) / "odd")
    except ConfigError as exc:
        refused = str(exc)
    else:
        refused = ""
    result = run_eval(eval_cfg(policy_path), Path(tmp) / "eval_two")
    return {"refused": refused, "returned": result is not None}


SCENARIOS = {"train": scenario_train, "eval": scenario_eval}


def child(name: str, rank: int, port: int, out_dir: str, kwargs: dict[str, Any]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    try:
        init_distributed("gloo", timeout_s=60)
        try:
            result = SCENARIOS[name](rank, **kwargs)
        finally:
            shutdown_distributed()
    except BaseException as exc:
        result = {"crash": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(name: str, out_dir: Path, **kwargs: Any) -> list[dict[str, Any]]:
    """Run scenario ``name`` on 2 ranks; return each rank's report (fails on a crash or the deadline)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch.distributed", __name__])
    port = free_port()
    procs = [
        ctx.Process(target=child, args=(name, r, port, str(out_dir), kwargs), daemon=True) for r in (0, 1)
    ]
    for p in procs:
        p.start()
    end = time.monotonic() + DEADLINE_S
    for p in procs:
        p.join(max(0.0, end - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    reports = []
    for r in (0, 1):
        path = out_dir / f"rank{r}.json"
        assert path.exists(), f"rank {r} reported nothing (exit code {procs[r].exitcode})"
        report = json.loads(path.read_text())
        assert "crash" not in report, f"rank {r} crashed:\n{report['traceback']}"
        reports.append(report)
    return reports


# --------------------------------------------------------------------------------------------------
# checks
def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    pa, pb = load_policy(a / "pretrained_model"), load_policy(b / "pretrained_model")
    for (name, x), (_, y) in zip(pa.state_dict().items(), pb.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=atol, msg=f"ema {name}")
    ra, rb = load_raw_weights(a / "pretrained_model"), load_raw_weights(b / "pretrained_model")
    assert set(ra) == set(rb) and ra
    for name in ra:
        torch.testing.assert_close(ra[name], rb[name], rtol=0, atol=atol, msg=f"raw {name}")


def rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_metrics(a: Path, b: Path, atol: float) -> None:
    ra, rb = rows(a), rows(b)
    assert [sorted(r) for r in ra] == [sorted(r) for r in rb]
    for x, y in zip(ra, rb, strict=True):
        for key in ("step", "loss", "val_loss", "lr"):
            if key in x:
                assert x[key] == pytest.approx(y[key], abs=atol), (key, x, y)


def files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*"))


def test_training_on_two_ranks_equals_one_process_and_resumes_exactly(tmp_path, tiny_store):
    one = tmp_path / "one"
    train(train_cfg(str(tiny_store)), one)
    launch("train", tmp_path, store=str(tiny_store), tmp=str(tmp_path), single=str(one))
    two = tmp_path / "two"
    last = Path("checkpoints") / "last"
    # same global batches and draws: the same run to float rounding (weights, EMA, loss history)
    assert_same_weights(one / last, two / last, atol=1e-5)
    assert_same_metrics(one, two, atol=1e-5)
    losses = [r["loss"] for r in rows(two) if "loss" in r]
    assert len(losses) == 3 and len(set(losses)) == 3
    # rank 0 alone wrote the run folder: the same files as one process, nothing else
    assert files(two) == files(one)
    # resumed under 2 ranks from step 3 of the 2-rank run: bitwise the uninterrupted run
    assert_same_weights(two / last, tmp_path / "two_cut" / last, atol=0)
    # (the loss of the log window that straddles the restart covers only its resumed steps, as in one
    # process; every other row is the same)
    resumed = [{k: v for k, v in r.items() if k != "steps_per_s"} for r in rows(tmp_path / "two_cut")]
    straight = [{k: v for k, v in r.items() if k != "steps_per_s"} for r in rows(two)]
    assert [r["step"] for r in resumed] == [r["step"] for r in straight]
    assert [r for r in resumed if r["step"] != 4] == [r for r in straight if r["step"] != 4]
    # ... and from step 3 of the one-process run: that run to float rounding
    assert_same_weights(one / last, tmp_path / "one_cut" / last, atol=1e-5)
    assert [r["step"] for r in rows(tmp_path / "one_cut")] == [r["step"] for r in rows(one)]
    assert rows(tmp_path / "one_cut")[-1]["val_loss"] == pytest.approx(rows(one)[-1]["val_loss"], abs=1e-5)


def test_eval_on_two_ranks_writes_the_one_process_file_and_bad_split_is_refused(
    tmp_path, tiny_store, checkpoint
):
    reports = launch("eval", tmp_path, store=str(tiny_store), tmp=str(tmp_path), policy_path=str(checkpoint))
    for report in reports:
        assert "batch_size=15" in report["refused"] and "does not split evenly over 2" in report["refused"]
    assert [r["returned"] for r in reports] == [True, False]
    assert not (tmp_path / "odd" / "train_config.json").exists()  # refused before rank 0 wrote it
    one = run_eval(eval_cfg(str(checkpoint)), tmp_path / "eval_one")
    two = json.loads((tmp_path / "eval_two" / "eval_info.json").read_text())
    one = json.loads(json.dumps(one))
    untimed = lambda eps: [{k: v for k, v in e.items() if k not in EPISODE_TIME_FIELDS} for e in eps]  # noqa: E731
    assert untimed(two["per_episode"]) == untimed(one["per_episode"])
    assert [r["seed"] for r in two["per_episode"]] == list(range(100000, 100005))
    drop = lambda agg: {k: v for k, v in agg.items() if k not in TIME_FIELDS}  # noqa: E731
    assert drop(two["aggregated"]) == drop(one["aggregated"])
    assert (one["run"].pop("world_size"), two["run"].pop("world_size")) == (1, 2)
    assert two["run"] == one["run"]


def test_torchrun_eval_command_writes_one_run_folder(tmp_path, checkpoint):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "parapolicy.scripts.eval", f"policy_path={checkpoint}", "eval.n_episodes=4"]
    cmd += ["eval.batch_size=2", "eval.max_steps=16", "eval.max_videos=3", "eval.progress=false"]
    cmd += [f"hydra.run.dir={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=DEADLINE_S, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("mean_score") == 1  # rank 0 alone reports
    info = json.loads((out / "eval_info.json").read_text())
    assert [r["episode_ix"] for r in info["per_episode"]] == [0, 1, 2, 3]
    videos = [f"videos/eval_episode_{i}.mp4" for i in range(3)]  # rank 1 wrote episode 2's
    assert [r["video_path"] for r in info["per_episode"]] == [str(out / v) for v in videos] + [None]
    assert files(out) == sorted(
        [".hydra", *(f".hydra/{f}.yaml" for f in ("config", "hydra", "overrides"))]
        + ["eval.log", "eval_info.json", "videos", *videos]
    )
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no second (per-rank) run folder
