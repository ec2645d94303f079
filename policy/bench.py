"""Sampler benchmark: sequential DDPM against ParaDDPM on the same observations and noise (no hydra).

One run measures, on the same device and settings:

* the denoiser's cost against batch rows;
* sequential sampling (the baseline: same compilation as ParaDDPM, batch-1 path);
* ParaDDPM over a grid of windows and tolerances, cold and warm-started across control steps.

Observations are the consecutive observation histories of one closed-loop episode (from a reference
seed) driven by the sequential sampler, so a warm start sees real consecutive control steps. Every
configuration samples every chunk from the same pre-drawn noise, and the sample is compared with the
sequential one (max |difference| in environment pixels). Timings are medians over repeats, with the
configurations interleaved inside each repeat so that machine noise hits them alike; the spread is the
[min, max] of the repeats. Separate instrumented passes (one per repeat, median reported) measure the
share of wall time spent outside the denoiser.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from parapolicy.envs import PushTEnv, reference_initial_state
from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.control.stitching import known_rows
from parapolicy.policy.diffusion.dispatch import run_sampler
from parapolicy.policy.diffusion.inpaint import Inpaint
from parapolicy.policy.diffusion.sequential import SampleResult, draw_noise
from parapolicy.policy.diffusion.warm_start import warm_start_guess
from parapolicy.policy.model.policy import OBS_KEY, DiffusionPolicy
from parapolicy.policy.runtime.auto_window import denoiser_cost_curve
from parapolicy.policy.runtime.timing import TimedDenoiser, timed_call


@dataclass
class SamplerBenchConfig:
    """Settings of `run_sampler_benchmark`."""

    kind: str = "ddpm"
    """Update rule (``ddpm``: ParaDDPM against DDPM)."""
    num_inference_steps: int = 100
    """K."""
    windows: tuple[int, ...] = (4, 8, 16, 32)
    """Picard windows to measure."""
    tols: tuple[float, ...] = (0.1, 0.01)
    """Picard tolerances to measure."""
    warm_starts: tuple[bool, ...] = (False, True)
    """Cold and/or warm start."""
    n_chunks: int = 6
    """Consecutive control steps (chunks) sampled per repeat."""
    episode_seed: int = 100000
    """Reference seed of the episode giving the observations."""
    noise_seed: int = 0
    """Seed of the per-chunk noise."""
    repeats: int = 5
    """Repeats (medians and [min, max] are reported)."""
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    """Rows at which the denoiser's cost is measured."""
    compile: str = "none"
    """Denoiser compilation for every sampler alike: ``none``, ``trace`` or ``cuda_graph`` (CUDA only)."""
    inpaint_delay: int | None = None
    """Measure instead what inpainting adds to the chunk latency (`run_inpaint_overhead`): each chunk
    sampled with and without continuing the previous chunk over this expected delay (ticks)."""

    def __post_init__(self) -> None:
        if self.n_chunks < 1 or self.repeats < 1 or self.num_inference_steps < 1:
            raise ValueError("n_chunks, repeats and num_inference_steps must be >= 1")
        if not self.windows or any(w < 1 or w > self.num_inference_steps for w in self.windows):
            raise ValueError(f"windows must lie in [1, num_inference_steps], got {self.windows}")
        if not self.tols or any(t <= 0 for t in self.tols):
            raise ValueError(f"tols must be > 0, got {self.tols}")


@dataclass
class BenchJobConfig:
    """`parapolicy-bench` settings."""

    policy_path: str = "assets/default_policy"
    """Checkpoint directory."""
    device: str = "cpu"
    """Torch device."""
    bench: SamplerBenchConfig = field(default_factory=SamplerBenchConfig)
    """What to measure."""


@torch.no_grad()
def record_chunks(policy: DiffusionPolicy, cfg: SamplerBenchConfig) -> list[dict[str, Tensor]]:
    """Observation histories, conditioning and noise of ``n_chunks`` consecutive control steps."""
    To, Ta = policy.config.n_obs_steps, policy.config.n_action_steps
    env = PushTEnv(obs_type="keypoints")
    obs, _ = env.reset(options={"reset_to_state": reference_initial_state(cfg.episode_seed)})
    history = deque([obs] * To, maxlen=To)
    gen = torch.Generator().manual_seed(cfg.noise_seed)
    chunks = []
    for _ in range(cfg.n_chunks):
        hist = torch.as_tensor(np.stack(history), dtype=torch.float32)[None]  # (1, To, Do)
        x_T, noise = draw_noise(
            policy.table, (1, policy.config.horizon, policy.config.action_dim), gen, device=policy.device
        )
        pred = policy.predict_action_chunk({OBS_KEY: hist}, noise=(x_T, noise))
        cond = policy.normalizer.normalize(OBS_KEY, hist.to(policy.device)).reshape(1, -1)  # (1, To*Do)
        chunks.append({"cond": cond, "x_T": x_T, "noise": noise, "reference": pred.plan})
        for action in pred.action[0].cpu().numpy()[:Ta]:
            obs, _, terminated, _, _ = env.step(action)
            history.append(obs)
            if terminated:
                break
    return chunks


def _run_config(
    policy: DiffusionPolicy, sampler: SamplerConfig, chunks: list[dict[str, Tensor]], denoise: Any
):
    """Sample every chunk in order (warm-starting from the previous one if asked); per-chunk results."""
    Ta = policy.config.n_action_steps
    out: list[tuple[float, SampleResult]] = []
    previous = None
    for chunk in chunks:
        guess = warm_start_guess(previous, Ta) if (sampler.warm_start and previous is not None) else None
        seconds, res = timed_call(
            lambda chunk=chunk, guess=guess: run_sampler(
                sampler, denoise, chunk["x_T"], policy.table, chunk["noise"], chunk["cond"], x0_guess=guess
            ),
            policy.device,
        )
        out.append((seconds, res))
        previous = res.sample
    return out


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


@torch.no_grad()
def run_sampler_benchmark(policy: DiffusionPolicy, cfg: SamplerBenchConfig) -> dict[str, Any]:
    """Measure every configuration; returns the rows of the table and the cost curve."""
    policy.eval()
    policy.set_compile(cfg.compile)
    seq = SamplerConfig(kind=cfg.kind, num_inference_steps=cfg.num_inference_steps)
    policy.set_sampler(seq)
    chunks = record_chunks(policy, cfg)
    configs: dict[str, SamplerConfig] = {"sequential": seq}
    for w in cfg.windows:
        for tol in cfg.tols:
            for warm in cfg.warm_starts:
                name = f"picard w={w} tol={tol:g}{' warm' if warm else ''}"
                configs[name] = dataclasses.replace(
                    seq, algorithm="picard", window=w, tol=tol, warm_start=warm
                )
    _run_config(policy, seq, chunks[:1], policy.denoise)  # warm-up (allocator, trace, caches)
    times: dict[str, list[float]] = {name: [] for name in configs}
    results: dict[str, list[SampleResult]] = {}
    for _ in range(cfg.repeats):
        for name, sampler in configs.items():
            runs = _run_config(policy, sampler, chunks, policy.denoise)
            times[name].append(1e3 * sum(t for t, _ in runs) / len(runs))  # ms per chunk, this repeat
            results[name] = [r for _, r in runs]
    rows = []
    seq_ms = statistics.median(times["sequential"])
    for name, sampler in configs.items():
        outside = []  # share of wall time outside the denoiser, one instrumented pass per repeat
        for _ in range(cfg.repeats):
            timed = TimedDenoiser(policy.denoise, policy.device)
            wall, _ = timed_call(
                lambda sampler=sampler, timed=timed: _run_config(policy, sampler, chunks, timed),
                policy.device,
            )
            outside.append(100.0 * max(0.0, 1.0 - timed.seconds / wall))
        res = results[name]
        diffs = [
            float((policy.normalizer.unnormalize("action", r.sample) - c["reference"]).abs().max())
            for r, c in zip(res, chunks, strict=True)
        ]
        ms = _spread(times[name])
        rows.append(
            {
                "name": name,
                "algorithm": sampler.algorithm,
                "window": sampler.window if sampler.is_parallel else None,
                "tol": sampler.tol if sampler.is_parallel else None,
                "warm_start": sampler.warm_start,
                "ms_per_chunk": ms,
                "speedup": seq_ms / ms["median"],
                "iterations": float(np.mean([r.iterations for r in res])),
                "model_calls": float(np.mean([r.model_calls for r in res])),
                "model_rows": float(np.mean([r.rows_evaluated for r in res])),
                "converged": all(r.all_converged for r in res),
                "max_abs_diff_px": max(diffs),
                "outside_denoiser_pct": statistics.median(outside),
                "outside_denoiser_pct_range": [min(outside), max(outside)],
            }
        )
    curve = denoiser_cost_curve(policy, tuple(cfg.batch_sizes), use_cache=False)
    return {
        "rows": rows,
        "denoiser_ms_per_call": {str(k): v for k, v in curve.items()},
        "n_chunks": len(chunks),
    }


def _continuation(policy: DiffusionPolicy, previous: Tensor, delay: int) -> Inpaint:
    """The `Inpaint` of a plan requested Ta ticks after ``previous`` (B, H, Da, environment units)."""
    cfg, Ta, start = policy.config, policy.config.n_action_steps, policy.config.action_start
    rows = previous[0, start:].cpu().numpy()  # (H - start, Da) executable rows
    k = known_rows(rows, 0, Ta, delay, cfg.horizon, start, last_action=rows[Ta - 1])
    assert k is not None
    target = policy.normalizer.normalize("action", torch.from_numpy(k.actions).float())[None]  # (1, H, Da)
    weight = torch.from_numpy(k.weight).float().view(1, -1, 1)  # (1, H, 1)
    return Inpaint(target.to(policy.device), weight.to(policy.device))


@torch.no_grad()
def run_inpaint_overhead(policy: DiffusionPolicy, cfg: SamplerBenchConfig) -> dict[str, Any]:
    """Chunk latency with and without inpainting, for the sequential sampler and each Picard setting.

    Chunk k >= 1 is sampled from its recorded observation and noise twice: plainly and continuing chunk
    k-1's reference plan as the controller would with ``stitch=inpaint`` at delay ``cfg.inpaint_delay``
    (plan requested Ta ticks after the previous one). The two are timed back to back, in alternating
    order per repeat, so machine load hits them alike; medians over every chunk and repeat.
    """
    assert cfg.inpaint_delay is not None
    policy.eval()
    policy.set_compile(cfg.compile)
    seq = SamplerConfig(kind=cfg.kind, num_inference_steps=cfg.num_inference_steps)
    policy.set_sampler(seq)
    chunks = record_chunks(policy, cfg)
    if len(chunks) < 2:
        raise ValueError("the inpainting overhead needs n_chunks >= 2")
    known = [_continuation(policy, prev["reference"], cfg.inpaint_delay) for prev in chunks[:-1]]
    configs: dict[str, SamplerConfig] = {"sequential": seq}
    for w in cfg.windows:
        for tol in cfg.tols:
            configs[f"picard w={w} tol={tol:g}"] = dataclasses.replace(
                seq, algorithm="picard", window=w, tol=tol
            )

    def once(
        sampler: SamplerConfig, chunk: dict[str, Tensor], ip: Inpaint | None
    ) -> tuple[float, SampleResult]:
        seconds, res = timed_call(
            lambda: run_sampler(
                sampler, policy.denoise, chunk["x_T"], policy.table, chunk["noise"], chunk["cond"], inpaint=ip
            ),
            policy.device,
        )
        return 1e3 * seconds, res

    once(seq, chunks[1], known[0])  # warm-up
    rows = []
    for name, sampler in configs.items():
        ms: dict[bool, list[float]] = {False: [], True: []}
        iters: dict[bool, list[int]] = {False: [], True: []}
        for rep in range(cfg.repeats):
            for chunk, ip in zip(chunks[1:], known, strict=True):
                for use in (False, True) if rep % 2 == 0 else (True, False):
                    t, res = once(sampler, chunk, ip if use else None)
                    ms[use].append(t)
                    iters[use].append(res.iterations)
        plain, inp = statistics.median(ms[False]), statistics.median(ms[True])
        rows.append(
            {
                "name": name,
                "ms_plain": _spread(ms[False]),
                "ms_inpaint": _spread(ms[True]),
                "overhead_pct": 100.0 * (inp / plain - 1.0),
                "iterations_plain": float(np.mean(iters[False])),
                "iterations_inpaint": float(np.mean(iters[True])),
            }
        )
    return {"inpaint_rows": rows, "delay": cfg.inpaint_delay, "n_chunks": len(known)}


def format_inpaint_overhead(result: dict[str, Any]) -> str:
    """A plain-text table of `run_inpaint_overhead`'s result."""
    head = (
        f"{'sampler':<22} {'ms plain':>9} {'ms inpaint':>10} {'overhead %':>10} {'iters plain/inpaint':>20}"
    )
    lines = [head, "-" * len(head)]
    for r in result["inpaint_rows"]:
        its = f"{r['iterations_plain']:.1f}/{r['iterations_inpaint']:.1f}"
        lines.append(
            f"{r['name']:<22} {r['ms_plain']['median']:>9.1f} {r['ms_inpaint']['median']:>10.1f} "
            f"{r['overhead_pct']:>10.1f} {its:>20}"
        )
    return "\n".join(lines)


def format_sampler_benchmark(result: dict[str, Any]) -> str:
    """A plain-text table of `run_sampler_benchmark`'s result."""
    head = (
        f"{'sampler':<28} {'ms/chunk median [min, max]':<30} {'speedup':>7} {'iters':>6} {'calls':>6} "
        f"{'rows':>7} {'max|diff| px':>12} {'outside %':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        ms = r["ms_per_chunk"]
        timing = f"{ms['median']:>8.1f} [{ms['min']:.1f}, {ms['max']:.1f}]"
        lines.append(
            f"{r['name']:<28} {timing:<30} {r['speedup']:>7.2f} {r['iterations']:>6.1f} "
            f"{r['model_calls']:>6.1f} {r['model_rows']:>7.1f} {r['max_abs_diff_px']:>12.4f} "
            f"{r['outside_denoiser_pct']:>9.1f}"
        )
    curve = result["denoiser_ms_per_call"]
    lines.append(
        "denoiser ms per call by batch rows: " + ", ".join(f"{b}: {ms:.2f}" for b, ms in curve.items())
    )
    return "\n".join(lines)
