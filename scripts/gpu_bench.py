"""The one-call GPU check of issue 12: every measurement in one process, each variant isolated.

Meant for a lent GPU machine, which has torch and numpy but none of our other dependencies and no
package index. It imports only torch, numpy and modules of `parapolicy.policy` that need nothing more;
`scripts/gpu_check.sh` makes the checkout importable without installing it and runs this script::

    OUT=/some/dir bash scripts/gpu_check.sh              # the GPU call (writes gpu_bench.json + a log)
    python scripts/gpu_bench.py --smoke --out x.json     # tiny sizes: every section in about 20 s of CPU

Sections, in order (each has a time budget; a failing variant records its error and the next runs):

* ``environment``: GPU name, driver, torch / CUDA / cuDNN versions, whether TF32 is allowed.
* ``network``: each denoiser variant (fp32 / bf16, eager / CUDA graph) against the strict-fp32 eager
  network on the same inputs: max |difference| and relative L2 difference; and graph against eager at
  the same precision.
* ``ddpm``: sequential DDPM and ParaDDPM (windows, tol) for every variant: ms per chunk (median and
  spread over the timed chunks, after warm-up), iterations, calls, rows, max |difference| to the
  strict-fp32 eager sequential sample of the same noise, and the share of wall time outside the network
  (one instrumented pass through `TimedDenoiser`); one warm-started ParaDDPM row per variant
  (`diffusion.warm_start.warm_start_guess`, on chunks whose conditioning drifts slowly).
* ``few_step``: DPM-Solver++(2M)-5 and -10 and DDIM-16, sequential against Picard (window K).
* ``cost``: the denoiser's ms per call against rows, per variant.
* ``parity``: Picard at tol = 0 against sequential with the same denoiser (fp32, TF32 off), eager and
  graphed: the in-script form of the ``gpu``-marked parity tests.
* ``auto_window``: what ``window=auto`` picks (`runtime.auto_window.resolve_sampler`), eager and graphed.
* ``shipped``: the trained policy in ``assets/default_policy`` (smaller network): sequential against
  ParaDDPM with realistic iteration counts.
* ``distributed``: the window batch split over 2 ranks on the one device
  (`python -m parapolicy.policy.runtime.distributed --time-calls`), NCCL then gloo: ms per call.
* ``pytest``: the ``gpu`` parity tests and the CUDA-graph tests, when pytest is installed.

Weights of the reference network are random: its per-call costs are representative, its iteration
counts are not (the ``shipped`` section gives trained ones). Every timing is device-synchronised wall
time through `runtime.timing.timed_call`. The JSON is rewritten after every section, so a run stopped by
its time limit keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from parapolicy.policy.config import PolicyConfig, SamplerConfig, UNetConfig
from parapolicy.policy.diffusion.coarse import x0_jacobian
from parapolicy.policy.diffusion.dispatch import run_sampler
from parapolicy.policy.diffusion.sequential import SampleResult, draw_noise
from parapolicy.policy.diffusion.warm_start import warm_start_guess
from parapolicy.policy.model.policy import DiffusionPolicy, build_step_table
from parapolicy.policy.runtime.cuda_graphs import GraphedDenoiser
from parapolicy.policy.runtime.graphed_picard import PicardGraph
from parapolicy.policy.runtime.timing import TimedDenoiser, timed_call

REPO = Path(__file__).resolve().parents[1]
Denoise = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


@dataclass(frozen=True)
class Profile:
    """Sizes and time budgets of one run (`FULL` for the GPU, `SMOKE` for a CPU check)."""

    down_dims: tuple[int, ...]
    embed: int
    steps: int  # K of the DDPM section
    windows: tuple[int, ...]
    tol: float
    chunks: int  # timed chunks per variant (after warm-up)
    warmup: int  # untimed chunks per variant
    outside_chunks: int  # chunks of the instrumented pass (share of time outside the network)
    rows: tuple[int, ...]  # cost-curve row counts
    cost_repeats: int
    few_step: tuple[tuple[str, int], ...]  # (kind, K)
    parity_chunks: int
    distributed_calls: int
    budget_s: dict[str, float]  # per section


FULL = Profile(
    down_dims=(256, 512, 1024),
    embed=256,
    steps=100,
    windows=(8, 16, 32),
    tol=0.1,
    chunks=20,
    warmup=2,
    outside_chunks=5,
    rows=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    cost_repeats=20,
    few_step=(("dpmsolver++", 5), ("dpmsolver++", 10), ("ddim", 16)),
    parity_chunks=2,
    distributed_calls=30,
    budget_s={
        "environment": 10,
        "network": 20,
        "ddpm": 150,
        "few_step": 40,
        "cost": 25,
        "parity": 20,
        "auto_window": 35,
        "shipped": 35,
        "distributed": 60,
        "pytest": 60,
    },
)
SMOKE = dataclasses.replace(
    FULL,
    down_dims=(16, 32),
    embed=16,
    steps=10,
    windows=(4, 8),
    chunks=3,
    warmup=1,
    outside_chunks=1,
    rows=(1, 2, 4),
    cost_repeats=3,
    parity_chunks=1,
    distributed_calls=3,
    budget_s=dict.fromkeys(FULL.budget_s, 60.0),
)
SECTIONS = tuple(FULL.budget_s)


# --------------------------------------------------------------------------------------------------
# denoiser variants
class CastDenoiser:
    """Run ``inner`` (a network or graphs of it in ``dtype``) on inputs cast to ``dtype``; return fp32.

    The sampler's state and step math stay in the input dtype: only the network runs in ``dtype``.
    """

    def __init__(self, inner: Denoise, dtype: torch.dtype) -> None:
        self.inner, self.dtype = inner, dtype

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        c = None if cond is None else cond.to(self.dtype)
        return self.inner(x.to(self.dtype), t, c).to(x.dtype)  # (N, H, D)


@contextlib.contextmanager
def tf32(allowed: bool) -> Iterator[None]:
    """Allow or forbid TF32 in matmuls and cuDNN convolutions for a block (restored after)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def make_variants(net: nn.Module, device: torch.device, cond_dim: int) -> dict[str, Denoise | str]:
    """Denoiser per variant name (``fp32 eager`` ...); a string says why a variant is unavailable."""
    variants: dict[str, Denoise | str] = {}
    net_bf16 = copy.deepcopy(net).to(torch.bfloat16).eval()
    for precision, network in (("fp32", net), ("bf16", net_bf16)):
        dtype = next(network.parameters()).dtype
        eager: Denoise = network if dtype == torch.float32 else CastDenoiser(network, dtype)
        variants[f"{precision} eager"] = eager
        if device.type != "cuda":
            variants[f"{precision} graph"] = "skipped: CUDA graphs need a CUDA device"
            continue
        graphed = GraphedDenoiser(network, device, (16, 2), cond_dim)
        variants[f"{precision} graph"] = graphed if dtype == torch.float32 else CastDenoiser(graphed, dtype)
    return variants


# --------------------------------------------------------------------------------------------------
# measurement helpers
def spread_ms(seconds: list[float]) -> dict[str, float]:
    """Median, min, max and 10th / 90th percentiles, in milliseconds."""
    ms = sorted(1e3 * s for s in seconds)
    q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else [ms[0]] * 9
    return {
        "median": statistics.median(ms),
        "min": ms[0],
        "max": ms[-1],
        "p10": q[0],
        "p90": q[-1],
        "n": len(ms),
    }


@dataclass
class Chunk:
    """One chunk's inputs: conditioning (1, C), x_T (1, H, D), step noise (K, 1, H, D)."""

    cond: Tensor
    x_T: Tensor
    noise: Tensor


def make_chunks(n: int, K: int, cond_dim: int, table: Any, device: torch.device, seed: int) -> list[Chunk]:
    """``n`` chunks whose conditioning drifts slowly (consecutive control steps), fresh noise each."""
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn(1, cond_dim, generator=gen)  # (1, C)
    chunks = []
    for _ in range(n):
        x_T, noise = draw_noise(table, (1, 16, 2), gen, device=device)
        chunks.append(Chunk(cond.to(device), x_T, noise))
        cond = cond + 0.05 * torch.randn(1, cond_dim, generator=gen)
    return chunks


Solve = Callable[[Chunk, "Tensor | None"], SampleResult]


def sampler_solve(
    sampler: SamplerConfig, denoise: Denoise, table: Any, jacobian: Tensor | None = None
) -> Solve:
    """One chunk through `run_sampler` (``guess``: the warm-start x̂₀ guess or None; ``jacobian``: the
    linear coarse model's, for a sampler with ``coarse="linear"``)."""
    return lambda c, guess: run_sampler(
        sampler, denoise, c.x_T, table, c.noise, c.cond, x0_guess=guess, coarse_jacobian=jacobian
    )


def sample_chunks(
    solve: Solve, warm: bool, chunks: list[Chunk], device: torch.device, n_action_steps: int = 8
) -> Iterator[tuple[float, SampleResult]]:
    """(seconds, result) of each chunk in order, warm-started from the previous one when ``warm``."""
    previous = None
    for c in chunks:
        guess = warm_start_guess(previous, n_action_steps) if warm and previous is not None else None
        seconds, res = timed_call(lambda c=c, guess=guess: solve(c, guess), device)
        previous = res.sample
        yield seconds, res


def measure_sampler(
    solve: Solve,
    warm: bool,
    chunks: list[Chunk],
    reference: list[Tensor],
    profile: Profile,
    deadline: float,
    device: torch.device,
    instrumented: tuple[Solve, TimedDenoiser] | None,
) -> dict[str, Any]:
    """Time ``solve`` over ``chunks`` after warm-up: statistics, parity to ``reference``, outside share.

    ``instrumented``: the same solver over a `TimedDenoiser` and that timer, for the share of time
    outside the network (None when the network cannot be timed apart, inside a captured iteration).
    """
    for _ in sample_chunks(solve, warm, chunks[: profile.warmup], device):
        pass
    times, results = [], []
    for seconds, res in sample_chunks(solve, warm, chunks, device):
        times.append(seconds)
        results.append(res)
        if time.monotonic() > deadline:
            break
    outside, n_outside = None, 0
    if instrumented is not None:  # fits what is left of the deadline: at least one chunk
        fits = int((deadline - time.monotonic()) / statistics.median(times))
        n_outside = max(1, min(profile.outside_chunks, fits))
        timed_solve, timer = instrumented
        wall, _ = timed_call(
            lambda: list(sample_chunks(timed_solve, warm, chunks[:n_outside], device)), device
        )
        outside = 100.0 * max(0.0, 1.0 - timer.seconds / wall)
    diffs = [float((r.sample - ref).abs().max()) for r, ref in zip(results, reference, strict=False)]
    return {
        "chunks_timed": len(times),
        "truncated": len(times) < len(chunks),
        "ms_per_chunk": spread_ms(times),
        "iterations": statistics.mean(r.iterations for r in results),
        "model_calls": statistics.mean(r.model_calls for r in results),
        "rows_evaluated": statistics.mean(r.rows_evaluated for r in results),
        "max_rows_per_call": max(max(r.rows_per_call) for r in results),
        "converged": all(r.all_converged for r in results),
        "max_abs_diff_to_fp32_sequential": max(diffs),
        "outside_network_pct": outside,
        "outside_chunks": n_outside,
    }


def reference_samples(
    sampler: SamplerConfig, net: nn.Module, table: Any, chunks: list[Chunk], deadline: float
) -> list[Tensor]:
    """The strict-fp32 (TF32 off) eager sequential sample of each chunk, as many as fit by ``deadline``.

    At least two; the caller keeps only the chunks that got a reference.
    """
    seq = dataclasses.replace(sampler, algorithm="sequential", warm_start=False)
    solve = sampler_solve(seq, net, table)
    out: list[Tensor] = []
    with tf32(False):
        for _, res in sample_chunks(solve, False, chunks, table.device):
            out.append(res.sample)
            if len(out) >= 2 and time.monotonic() > deadline:
                break
    return out


# --------------------------------------------------------------------------------------------------
# the run
class Run:
    """Holds the result dict, the section deadlines and the JSON file; runs sections in isolation."""

    def __init__(self, args: argparse.Namespace, profile: Profile) -> None:
        self.args, self.profile = args, profile
        self.device = torch.device(args.device)
        self.out = Path(args.out) if args.out else None
        self.result: dict[str, Any] = {
            "profile": "smoke" if args.smoke else "full",
            "settings": dataclasses.asdict(profile),
            "sections": {},
            "errors": [],
        }
        self.started = time.monotonic()

    def write(self) -> None:
        """Rewrite the JSON (atomically) with everything measured so far."""
        self.result["wall_s"] = time.monotonic() - self.started
        if self.out is not None:
            tmp = self.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.result, indent=1, default=str))
            os.replace(tmp, self.out)

    def section(self, name: str, fn: Callable[[float], Any]) -> None:
        """Run one section with its deadline; record its result or its error, its seconds, then write."""
        if name not in self.args.sections:
            return
        start = time.monotonic()
        left = self.args.budget_s - (start - self.started)
        deadline = start + min(self.profile.budget_s[name], max(left, 0.0))
        print(f"[{time.monotonic() - self.started:7.1f} s] section {name}", flush=True)
        if left <= 0:
            entry: dict[str, Any] = {"status": "skipped: the run's time budget is spent"}
        else:
            try:
                entry = {"status": "ok", "result": fn(deadline)}
            except Exception as exc:  # a failed section is recorded and the run goes on
                entry = {"status": f"error: {type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
                self.result["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
        entry["seconds"] = time.monotonic() - start
        self.result["sections"][name] = entry
        self.write()

    def variant(
        self, rows: list[dict[str, Any]], record: dict[str, Any], fn: Callable[[], dict[str, Any]]
    ) -> None:
        """Append ``record`` updated with ``fn()``'s result, or with its error."""
        try:
            record.update(fn())
        except Exception as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
            self.result["errors"].append(f"{record.get('name')}: {record['error']}")
        rows.append(record)
        print("   ", json.dumps({k: v for k, v in record.items() if k in ("name", "error", "ms_per_chunk")}))


def environment(device: torch.device) -> dict[str, Any]:
    """GPU, driver, versions and TF32 flags."""
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "tf32_matmul_allowed": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn_allowed": torch.backends.cudnn.allow_tf32,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name, sm_count=props.multi_processor_count, memory_gib=props.total_memory / 2**30
        )
        try:
            query = [
                "nvidia-smi",
                "--query-gpu=name,driver_version,clocks.sm,clocks.mem",
                "--format=csv,noheader",
            ]
            info["nvidia_smi"] = subprocess.run(
                query, capture_output=True, text=True, timeout=15
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            info["nvidia_smi"] = f"unavailable: {exc}"
    else:
        info["gpu"] = None
        info["cpu"] = platform.processor() or platform.machine()
    return info


def network_parity(
    net: nn.Module, variants: dict[str, Denoise | str], device: torch.device, cond_dim: int
) -> dict:
    """Each variant against the strict-fp32 eager network, and graph against eager per precision."""
    gen = torch.Generator().manual_seed(1)
    inputs = []
    for rows in (1, 7, 32):
        x = torch.randn(rows, 16, 2, generator=gen).to(device)
        t = torch.randint(0, 100, (rows,), generator=gen).to(device)
        inputs.append((x, t, torch.randn(rows, cond_dim, generator=gen).to(device)))
    with tf32(False):
        ref = [net(*i) for i in inputs]
    outs = {name: [v(*i) for i in inputs] for name, v in variants.items() if not isinstance(v, str)}

    def compare(a: list[Tensor], b: list[Tensor]) -> dict[str, float]:
        return {
            "max_abs_diff": max(float((p - q).abs().max()) for p, q in zip(a, b, strict=True)),
            "rel_l2": max(float((p - q).norm() / q.norm()) for p, q in zip(a, b, strict=True)),
        }

    result: dict[str, Any] = {"vs_strict_fp32_eager": {n: compare(o, ref) for n, o in outs.items()}}
    result["graph_vs_eager"] = {
        p: compare(outs[f"{p} graph"], outs[f"{p} eager"])
        for p in ("fp32", "bf16")
        if f"{p} graph" in outs and f"{p} eager" in outs
    }
    return result


def sampler_grid(
    run: Run,
    config: PolicyConfig,
    net: nn.Module,
    variants: dict[str, Denoise | str],
    samplers: dict[str, SamplerConfig],
    deadline: float,
    chunks: list[Chunk] | None = None,
) -> list[dict[str, Any]]:
    """Every sampler x every variant, each isolated; the chunks and reference are shared by the samplers.

    ``chunks``: the inputs (default: `make_chunks` with random conditioning); the reference is the
    strict-fp32 eager sequential sample of each through ``net``.

    Picard samplers of the kinds `PicardGraph` supports also run as ``<precision> iteration-graph``
    (the whole iteration, network included, replayed as one CUDA graph; ``iteration-eager`` off CUDA,
    where the same fixed-shape iteration runs eagerly).
    """
    p, device = run.profile, run.device
    first = next(iter(samplers.values()))
    table = build_step_table(config, first, device)
    if chunks is None:
        chunks = make_chunks(p.chunks, first.num_inference_steps, config.global_cond_dim, table, device, 0)
    # the reference gets at most a fifth of the section; chunks without one are dropped
    reference = reference_samples(
        first, net, table, chunks, time.monotonic() + (deadline - time.monotonic()) / 5
    )
    chunks = chunks[: len(reference)]
    jacobian = None  # the linear coarse model, measured on the first chunk as a policy does on its first plan
    if any(s.is_parallel and s.coarse == "linear" for s in samplers.values()):
        seq = dataclasses.replace(first, algorithm="sequential", warm_start=False, coarse="held_x0")
        c0 = chunks[0]
        traj = run_sampler(seq, net, c0.x_T, table, c0.noise, c0.cond, return_trajectory=True).trajectory
        jacobian = x0_jacobian(net, table, traj, c0.cond)
    jobs: list[tuple[dict[str, Any], Callable[[float], dict[str, Any]] | str]] = []
    for vname, denoise in variants.items():
        for sname, sampler in samplers.items():
            record = sampler_record(vname, sname, sampler)
            if isinstance(denoise, str):
                jobs.append((record, denoise))
                continue

            def job(share: float, s: SamplerConfig = sampler, d: Denoise = denoise) -> dict[str, Any]:
                jac = jacobian if s.is_parallel and s.coarse == "linear" else None
                timer = TimedDenoiser(d, device)
                instrumented = (sampler_solve(s, timer, table, jac), timer)
                solve = sampler_solve(s, d, table, jac)
                return measure_sampler(solve, s.warm_start, chunks, reference, p, share, device, instrumented)

            jobs.append((record, job))
    captured = device.type == "cuda"
    for precision in ("fp32", "bf16"):
        network = variants.get(f"{precision} eager")
        for sname, sampler in samplers.items():
            if not sampler.is_parallel or sampler.kind == "dpmsolver++" or sampler.update != "picard":
                continue
            if not callable(network):
                continue
            vname = f"{precision} iteration-{'graph' if captured else 'eager'}"
            record = sampler_record(vname, sname, sampler)
            record["baseline_variant"] = f"{precision} {'graph' if captured else 'eager'}"

            def job(share: float, s: SamplerConfig = sampler, d: Denoise = network) -> dict[str, Any]:
                B, H, D = chunks[0].x_T.shape
                graph = PicardGraph(d, table, (B, H, D), config.global_cond_dim, window=s.window, tol=s.tol)
                solve: Solve = lambda c, guess: graph.sample(c.x_T, c.noise, c.cond, guess)  # noqa: E731
                result = measure_sampler(solve, s.warm_start, chunks, reference, p, share, device, None)
                return {**result, "captured": graph.graph}

            jobs.append((record, job))
    rows: list[dict[str, Any]] = []
    for i, (record, job) in enumerate(jobs):
        if isinstance(job, str):
            record["error"] = job
            rows.append(record)
        elif time.monotonic() > deadline:
            record["error"] = "skipped: section time budget spent"
            rows.append(record)
        else:  # an equal share of what is left, so one slow variant cannot starve the rest
            runnable = sum(1 for _, j in jobs[i:] if not isinstance(j, str))
            share = time.monotonic() + (deadline - time.monotonic()) / max(1, runnable)
            run.variant(rows, record, lambda job=job, share=share: job(share))
    add_speedups(rows)
    return rows


def sampler_record(vname: str, sname: str, sampler: SamplerConfig) -> dict[str, Any]:
    """The identifying fields of one row."""
    picard = sampler.is_parallel
    return {
        "name": f"{vname} {sname}",
        "variant": vname,
        "sampler": sname,
        "kind": sampler.kind,
        "K": sampler.num_inference_steps,
        "algorithm": sampler.algorithm,
        "parallel": picard,
        "window": sampler.window if picard else None,
        "tol": sampler.tol if picard else None,
        "update": sampler.update if picard else None,
        "coarse": sampler.coarse if picard and sampler.update == "parareal" else None,
        "warm_start": sampler.warm_start,
    }


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Speedup of each row against the sequential row of the same variant and against the best sequential."""
    seq = {
        r["variant"]: r["ms_per_chunk"]["median"] for r in rows if not r["parallel"] and "ms_per_chunk" in r
    }
    best = min(seq.values(), default=None)
    for r in rows:
        if "ms_per_chunk" not in r:
            continue
        ms = r["ms_per_chunk"]["median"]
        base = r.get("baseline_variant", r["variant"])
        if base in seq:
            r["speedup_vs_same_variant_sequential"] = seq[base] / ms
        if best is not None:
            r["speedup_vs_fastest_sequential"] = best / ms


def ddpm_samplers(p: Profile) -> dict[str, SamplerConfig]:
    """Sequential DDPM-K, ParaDDPM at each window (the ParaDiGMS update, and the parareal update with the
    linear coarse model, `parapolicy-compare`'s), and one warm-started ParaDDPM."""
    seq = SamplerConfig(kind="ddpm", num_inference_steps=p.steps)
    out = {f"ddpm{p.steps} sequential": seq}
    for w in p.windows:
        w = min(w, p.steps)
        out[f"paraddpm w={w} tol={p.tol:g}"] = dataclasses.replace(
            seq, algorithm="picard", window=w, tol=p.tol
        )
        out[f"paraddpm parareal linear w={w} tol={p.tol:g}"] = dataclasses.replace(
            seq, algorithm="picard", window=w, tol=p.tol, update="parareal", coarse="linear"
        )
    w = min(p.windows[len(p.windows) // 2], p.steps)
    out[f"paraddpm w={w} tol={p.tol:g} warm"] = dataclasses.replace(
        seq, algorithm="picard", window=w, tol=p.tol, warm_start=True
    )
    return out


def cost_curve(
    variants: dict[str, Denoise | str], p: Profile, device: torch.device, cond_dim: int, deadline: float
) -> dict:
    """ms per call against rows for every variant (median and spread of ``cost_repeats`` calls)."""
    result: dict[str, Any] = {}
    gen = torch.Generator().manual_seed(2)
    for name, denoise in variants.items():
        if isinstance(denoise, str):
            result[name] = denoise
            continue
        curve: dict[str, Any] = {}
        for rows in p.rows:
            if time.monotonic() > deadline:
                curve[str(rows)] = "skipped: section time budget spent"
                continue
            x = torch.randn(rows, 16, 2, generator=gen).to(device)
            t = torch.randint(0, 100, (rows,), generator=gen).to(device)
            c = torch.randn(rows, cond_dim, generator=gen).to(device)
            timer = TimedDenoiser(denoise, device)
            for _ in range(3 + p.cost_repeats):
                timer(x, t, c)
            curve[str(rows)] = spread_ms(timer.call_seconds[3:])
        result[name] = curve
    return result


def tol0_parity(run: Run, config: PolicyConfig, net: nn.Module, variants: dict, deadline: float) -> dict:
    """Picard at tol = 0 equals sequential with the same denoiser (fp32, TF32 off), eager and graphed."""
    p = run.profile
    seq = SamplerConfig(kind="ddpm", num_inference_steps=p.steps)
    table = build_step_table(config, seq, run.device)
    chunks = make_chunks(p.parity_chunks, p.steps, config.global_cond_dim, table, run.device, 3)
    out: dict[str, Any] = {}
    with tf32(False):
        for name in ("fp32 eager", "fp32 graph"):
            denoise = variants.get(name)
            if isinstance(denoise, str) or denoise is None or time.monotonic() > deadline:
                out[name] = denoise if isinstance(denoise, str) else "skipped"
                continue
            diffs, iters = [], []
            for c in chunks:
                a = run_sampler(seq, denoise, c.x_T, table, c.noise, c.cond)
                picard = dataclasses.replace(seq, algorithm="picard", window=min(16, p.steps), tol=1e-30)
                b = run_sampler(picard, denoise, c.x_T, table, c.noise, c.cond)
                diffs.append(float((a.sample - b.sample).abs().max()))
                iters.append(b.iterations)
            out[name] = {"max_abs_diff": max(diffs), "iterations": iters, "ok": max(diffs) <= 1e-4}
    return out


def auto_window(run: Run, policy: DiffusionPolicy) -> dict:
    """``window=auto`` resolved on this device, eager and (on CUDA) graphed; the cache goes to a temp dir."""
    from parapolicy.policy.runtime.auto_window import resolve_sampler

    out: dict[str, Any] = {}
    modes = ("none", "cuda_graph") if run.device.type == "cuda" else ("none",)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["PARAPOLICY_CACHE_DIR"] = cache
        for mode in modes:
            policy.set_compile(mode)
            auto = SamplerConfig(
                num_inference_steps=run.profile.steps, algorithm="picard", window="auto", tol=0.1
            )
            resolved, report = resolve_sampler(policy, auto)
            out["eager" if mode == "none" else "graph"] = {"chosen": resolved.window, "report": report}
        policy.set_compile("none")
    return out


def shipped_policy(run: Run, deadline: float) -> dict:
    """The trained shipped policy: sequential DDPM-K against ParaDDPM, with realistic iteration counts."""
    from parapolicy.policy.model.pretrained import load_policy
    from parapolicy.policy.runtime.auto_window import calibration_observations

    p = run.profile
    policy = load_policy(REPO / "assets" / "default_policy", device=run.device)
    obs = calibration_observations(policy, n=p.chunks)  # (n, To, Do)
    cond = policy.normalizer.normalize("obs", obs.to(run.device)).reshape(obs.shape[0], -1)  # (n, C)
    seq = SamplerConfig(kind="ddpm", num_inference_steps=p.steps)
    table = build_step_table(policy.config, seq, run.device)
    chunks = make_chunks(len(cond), p.steps, policy.config.global_cond_dim, table, run.device, 4)
    for c, row in zip(chunks, cond, strict=True):
        c.cond = row[None]
    samplers = {name: s for name, s in ddpm_samplers(p).items() if not s.warm_start}
    net = policy.network
    variants: dict[str, Denoise | str] = {
        "fp32 eager": net,
        "fp32 graph": "skipped: CUDA graphs need a CUDA device",
    }
    if run.device.type == "cuda":
        H, D = policy.config.horizon, policy.config.action_dim
        variants["fp32 graph"] = GraphedDenoiser(net, run.device, (H, D), policy.config.global_cond_dim)
    rows = sampler_grid(run, policy.config, net, variants, samplers, deadline, chunks)
    for r in rows:
        r["name"] = f"shipped {r['name']}"
    return {"unet": dataclasses.asdict(policy.config.unet), "params": count(policy.network), "rows": rows}


def distributed(run: Run, deadline: float) -> dict:
    """2 ranks on this device: `runtime.distributed`'s self-check with per-call timing; NCCL, then gloo."""
    p = run.profile
    backends = ("nccl", "gloo") if run.device.type == "cuda" else ("gloo",)
    out: dict[str, Any] = {}
    for i, backend in enumerate(backends):
        # each backend gets an equal share of what is left (a hung NCCL attempt cannot starve gloo)
        left = (deadline - time.monotonic()) / (len(backends) - i)
        if left < 10:
            out[backend] = "skipped: section time budget spent"
            continue
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            "-m", "parapolicy.policy.runtime.distributed",
            "--backend", backend, "--device", run.device.type,
            "--down-dims", ",".join(map(str, p.down_dims)), "--embed", str(p.embed),
            "--steps", str(min(p.steps, 20)), "--batch", "1", "--tol", "1e-30",
            "--time-calls", str(p.distributed_calls), "--rows", ",".join(str(r) for r in (1, 8, 16, 32)),
            "--timeout-s", str(max(10, int(left / 2))),
        ]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired as exc:
            out[backend] = {"error": f"timed out after {left:.0f} s", "stderr_tail": str(exc.stderr)[-2000:]}
            continue
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        entry: dict[str, Any] = json.loads(lines[-1]) if lines else {}
        entry["returncode"] = proc.returncode
        if proc.returncode != 0 or not lines:
            entry["stderr_tail"] = proc.stderr[-2000:]
        out[backend] = entry
    return out


def gpu_pytest(deadline: float) -> dict:
    """The ``gpu`` parity tests and the CUDA-graph tests (skipped by pytest without CUDA)."""
    try:
        import pytest  # noqa: F401
    except ImportError:
        return {"status": "pytest is not installed here; the parity section is the in-script equivalent"}
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider",
        "tests/test_picard.py", "tests/test_denoiser.py", "tests/test_cuda_graphs.py",
        "tests/test_graphed_picard.py", "-k", "cuda or gpu or graph",
    ]  # fmt: skip
    left = max(5.0, deadline - time.monotonic())
    try:
        env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # no third-party plugins are needed
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left, cwd=REPO, env=env)
    except subprocess.TimeoutExpired as exc:
        return {"error": f"timed out after {left:.0f} s", "stdout_tail": str(exc.stdout)[-3000:]}
    return {
        "returncode": proc.returncode,
        "summary": proc.stdout.strip().splitlines()[-1:],
        "tail": proc.stdout[-3000:],
    }


def count(net: nn.Module) -> int:
    """Number of parameters."""
    return sum(q.numel() for q in net.parameters())


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals read off the rows: best ParaDDPM ms, speedups against graphed sequential."""
    rows = result["sections"].get("ddpm", {}).get("result") or []
    out: dict[str, Any] = {}
    for precision in ("fp32", "bf16"):
        ok = [r for r in rows if r["variant"].startswith(precision) and "ms_per_chunk" in r]
        seq = [r["ms_per_chunk"]["median"] for r in ok if not r["parallel"]]
        par = [r for r in ok if r["parallel"] and not r["warm_start"]]
        if not seq or not par:
            continue
        best = min(par, key=lambda r: r["ms_per_chunk"]["median"])
        ms = best["ms_per_chunk"]["median"]
        out[precision] = {
            "best_paraddpm": best["name"],
            "best_paraddpm_ms": ms,
            "fastest_sequential_ms": min(seq),
            "speedup": min(seq) / ms,
            "goal_le_3ms": ms <= 3.0,
            "goal_5x": min(seq) / ms >= 5.0,
        }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the sections and write the JSON; returns the result dict."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true", help="tiny network, few steps and chunks (a CPU check)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    ap.add_argument("--budget-s", type=float, default=450.0, help="time for all sections together")
    ap.add_argument("--no-tf32", action="store_true", help="forbid TF32 in the timed fp32 variants")
    ap.add_argument("--out", default=None, help="JSON file to (re)write after every section")
    ap.add_argument("--down-dims", default=None, help="override the network widths, e.g. 16,32 (a CPU check)")
    ap.add_argument("--embed", type=int, default=None, help="override the step-embedding width")
    args = ap.parse_args(argv)
    args.sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown sections {unknown}; choose from {SECTIONS}")
    profile = SMOKE if args.smoke else FULL
    if args.down_dims is not None:
        profile = dataclasses.replace(profile, down_dims=tuple(int(d) for d in args.down_dims.split(",")))
    if args.embed is not None:
        profile = dataclasses.replace(profile, embed=args.embed)
    if args.device == "cpu":
        torch.set_num_threads(1)  # a CPU run is a check of the script; on a shared CPU threads stall
    run = Run(args, profile)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not args.no_tf32
    torch.manual_seed(0)
    unet = UNetConfig(down_dims=profile.down_dims, diffusion_step_embed_dim=profile.embed)
    config = PolicyConfig(unet=unet)
    policy = DiffusionPolicy(config).to(run.device).eval()
    gen = torch.Generator().manual_seed(1)
    policy.normalizer.fit(
        {"obs": torch.rand(200, 20, generator=gen) * 512, "action": torch.rand(200, 2, generator=gen) * 512}
    )
    net, C = policy.network, config.global_cond_dim
    run.result["network"] = {
        "unet": dataclasses.asdict(unet),
        "params": count(net),
        "weights": "random (seed 0)",
    }
    with torch.inference_mode():
        variants = make_variants(net, run.device, C)
        run.section("environment", lambda d: environment(run.device))
        run.section("network", lambda d: network_parity(net, variants, run.device, C))
        run.section("ddpm", lambda d: sampler_grid(run, config, net, variants, ddpm_samplers(profile), d))

        def few_step(deadline: float) -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = []
            for i, (kind, K) in enumerate(profile.few_step):
                seq = SamplerConfig(kind=kind, num_inference_steps=K)
                samplers = {
                    f"{kind}-{K} sequential": seq,
                    f"para{kind}-{K} w={K} tol={profile.tol:g}": dataclasses.replace(
                        seq, algorithm="picard", window=K, tol=profile.tol
                    ),
                }
                share = time.monotonic() + (deadline - time.monotonic()) / (len(profile.few_step) - i)
                rows += sampler_grid(run, config, net, variants, samplers, share)
            return rows

        run.section("few_step", few_step)
        run.section("cost", lambda d: cost_curve(variants, profile, run.device, C, d))
        run.section("parity", lambda d: tol0_parity(run, config, net, variants, d))
    run.section("auto_window", lambda d: auto_window(run, policy))
    with torch.inference_mode():
        run.section("shipped", lambda d: shipped_policy(run, d))
    run.section("distributed", lambda d: distributed(run, d))
    run.section("pytest", gpu_pytest)
    run.result["summary"] = summary(run.result)
    run.write()
    print_table(run.result)
    return run.result


def print_table(result: dict[str, Any]) -> None:
    """The short table printed last (the device tool returns the end of the output)."""
    env = result["sections"].get("environment", {}).get("result", {})
    params = result["network"]["params"]
    print(f"\n{env.get('gpu') or env.get('cpu')} | torch {env.get('torch')} | {params:,} params")
    shipped = (result["sections"].get("shipped", {}).get("result") or {}).get("rows") or []
    groups = [result["sections"].get(n, {}).get("result") or [] for n in ("ddpm", "few_step")] + [shipped]
    for rows in groups:
        for r in rows:
            if "ms_per_chunk" not in r:
                continue  # skipped or failed rows: see "errors" and the JSON
            speedup = r.get("speedup_vs_same_variant_sequential", 0.0)
            out = "-" if r["outside_network_pct"] is None else f"{r['outside_network_pct']:4.1f}%"
            print(
                f"{r['name']:<48} {r['ms_per_chunk']['median']:9.2f} ms  x{speedup:5.2f}"
                f"  iters {r['iterations']:6.1f}  rows {r['rows_evaluated']:7.1f}"
                f"  diff {r['max_abs_diff_to_fp32_sequential']:.1e}  out {out}"
            )
    print("summary:", json.dumps(result.get("summary")))
    print("errors:", len(result["errors"]), *result["errors"][:10], sep="\n  ")
    print(f"wall {result['wall_s']:.1f} s")


if __name__ == "__main__":
    main()
