"""Sampler benchmark: DDPM-100, ParaDDPM and few-step solvers on the same observations and noise (no hydra).

One run measures, on the same device and settings:

* the denoiser's cost against batch rows;
* the baseline, sequential DDPM-K (same compilation as every other sampler, batch-1 path);
* ParaDDPM over a grid of windows, Picard corrections (``picard``, ``parareal``; the latter with the
  held-x̂₀ and the linear coarse model), tolerances and warm starts;
* the few-step solvers users deploy (DPM-Solver++(2M), DDIM), each sequential and as Picard over its
  whole chain.

Observations are the consecutive observation histories of one closed-loop episode (from a reference
seed) driven by the baseline, so a warm start sees real consecutive control steps. Every sampler starts
each chunk from the same pre-drawn x_T (and the first K of the same step noises); its sample is
compared with its own rule's sequential sample and with the baseline's (max |difference| in environment
pixels). Timings are medians over rounds; each round runs every sampler once, in the same order
(interleaved, ABAB), so that machine noise hits them alike; the spread is the [min, max] over rounds.
Each round also runs one instrumented pass per sampler for the share of wall time outside the
denoiser, and a `LoadProbe` records the machine's load so a loaded run is flagged.
Speedups are given against the baseline and against the fastest sequential sampler of the run.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from parapolicy.envs import PushTEnv, reference_initial_state
from parapolicy.policy.config import SamplerConfig, shipped_path
from parapolicy.policy.control.stitching import known_rows
from parapolicy.policy.diffusion.coarse import x0_jacobian
from parapolicy.policy.diffusion.dispatch import run_sampler
from parapolicy.policy.diffusion.inpaint import Inpaint
from parapolicy.policy.diffusion.sequential import SampleResult, draw_noise
from parapolicy.policy.diffusion.step_table import StepTable
from parapolicy.policy.diffusion.warm_start import warm_start_guess
from parapolicy.policy.model.image_observation import env_obs_type, env_observation, history_observation
from parapolicy.policy.model.policy import DiffusionPolicy, build_step_table, check_compile_mode
from parapolicy.policy.runtime.auto_window import denoiser_cost_curve
from parapolicy.policy.runtime.gc_freeze import frozen_heap
from parapolicy.policy.runtime.load_probe import LoadProbe, machine_info
from parapolicy.policy.runtime.timing import TimedDenoiser, timed_call


@dataclass
class SamplerBenchConfig:
    """Settings of `run_sampler_benchmark`."""

    kind: str = "ddpm"
    """Update rule of the baseline and of the ParaDDPM grid (``ddpm``: ParaDDPM against DDPM)."""
    num_inference_steps: int = 100
    """K of the baseline and of the ParaDDPM grid."""
    windows: tuple[int, ...] = (8, 16, 24, 32)
    """Picard windows of the grid."""
    tols: tuple[float, ...] = (0.1,)
    """Picard tolerances of the grid; the first one is also the few-step solvers' Picard tolerance."""
    updates: tuple[str, ...] = ("picard", "parareal")
    """Picard corrections (`SamplerConfig.update`) of the grid and of the few-step Picard samplers."""
    coarses: tuple[str, ...] = ("held_x0", "linear")
    """Coarse models (`SamplerConfig.coarse`) of the grid's ``parareal`` rows. The linear model's
    Jacobian is measured once, before the rounds, on the first chunk of the next episode (not one of the
    timed chunks), as a policy measures it on its first plan; its time is recorded."""
    warm_starts: tuple[bool, ...] = (False,)
    """Cold and/or warm start of the grid."""
    few_step: tuple[str, ...] = ("dpmsolver++:5", "dpmsolver++:10", "ddim:8", "ddim:16")
    """Few-step solvers as ``kind:K``: each sequential and, per update, Picard with window K."""
    n_chunks: int = 6
    """Consecutive control steps (chunks) sampled per round."""
    episode_seed: int = 100000
    """Reference seed of the episode giving the observations."""
    noise_seed: int = 0
    """Seed of the per-chunk noise."""
    repeats: int = 5
    """Rounds; each round runs every sampler once, in the same order (medians, [min, max] reported)."""
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    """Rows at which the denoiser's cost is measured."""
    compile: str = "trace"
    """Denoiser compilation for every sampler alike (`DiffusionPolicy.set_compile`): ``trace`` (what
    compare, eval and profile run by default), ``none`` (eager) or ``cuda_graph`` (CUDA only)."""
    inpaint_delay: int | None = None
    """Measure instead what inpainting adds to the chunk latency (`run_inpaint_overhead`): each chunk
    sampled with and without continuing the previous chunk over this expected delay (ticks)."""
    progress: bool = True
    """Print a line to stderr after each round (its wall time and the machine's load)."""

    def __post_init__(self) -> None:
        if self.n_chunks < 1 or self.repeats < 1 or self.num_inference_steps < 1:
            raise ValueError("n_chunks, repeats and num_inference_steps must be >= 1")
        if not self.windows or any(w < 1 or w > self.num_inference_steps for w in self.windows):
            raise ValueError(f"windows must lie in [1, num_inference_steps], got {self.windows}")
        if not self.tols or not all(0 < t < math.inf for t in self.tols):
            raise ValueError(f"tols must be finite and > 0, got {self.tols}")
        SamplerConfig(kind=self.kind)  # raises naming a bad kind
        check_compile_mode(self.compile)
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch_sizes must be rows >= 1, got {self.batch_sizes}")
        if self.inpaint_delay is not None and (self.inpaint_delay < 0 or self.n_chunks < 2):
            raise ValueError(
                f"inpaint_delay needs a delay >= 0 and n_chunks >= 2 (each chunk continues the one before), "
                f"got inpaint_delay={self.inpaint_delay}, n_chunks={self.n_chunks}"
            )
        if not self.updates:
            raise ValueError("updates must name at least one Picard correction, got ()")
        for update in self.updates:
            SamplerConfig(update=update)  # raises naming the bad rule
        if not self.coarses:
            raise ValueError("coarses must name at least one coarse model, got ()")
        for coarse in self.coarses:
            SamplerConfig(algorithm="picard", update="parareal", coarse=coarse)  # raises naming a bad model
        for spec in self.few_step:
            _, K = parse_solver(spec)
            if self.num_inference_steps < K:
                raise ValueError(
                    f"few_step {spec!r}: K must be <= num_inference_steps={self.num_inference_steps} "
                    "(its noise is the baseline's first K step noises)"
                )


def parse_solver(spec: str) -> tuple[str, int]:
    """``"kind:K"`` -> (kind, K), e.g. ``"dpmsolver++:5"``; raises ValueError naming a bad spec."""
    kind, sep, steps = str(spec).partition(":")
    if not sep or not steps.strip().isdigit() or int(steps) < 1:
        raise ValueError(f"few_step entries are 'kind:K' with K >= 1 (e.g. 'ddim:8'), got {spec!r}")
    SamplerConfig(kind=kind.strip())  # raises naming the bad kind
    return kind.strip(), int(steps)


def sampler_name(sampler: SamplerConfig) -> str:
    """A short row name: ``ddpm-100``, ``ddim-8 picard w=8 tol=0.1``, ``ddpm-100 parareal w=16 tol=0.1``."""
    name = f"{sampler.kind}-{sampler.num_inference_steps}"
    if sampler.is_parallel:
        name += f" {sampler.update} w={sampler.window} tol={sampler.tol:g}"
        name += " linear" if sampler.coarse == "linear" else ""
        name += " warm" if sampler.warm_start else ""
    return name


def bench_samplers(cfg: SamplerBenchConfig) -> list[SamplerConfig]:
    """Every sampler `run_sampler_benchmark` measures, the baseline (sequential ``kind``-K) first."""
    base = SamplerConfig(kind=cfg.kind, num_inference_steps=cfg.num_inference_steps)
    out = [base]
    for w in cfg.windows:
        for update in cfg.updates:
            for coarse in cfg.coarses if update == "parareal" else ("held_x0",):
                for tol in cfg.tols:
                    for warm in cfg.warm_starts:
                        picard = {"algorithm": "picard", "window": w, "tol": tol, "warm_start": warm}
                        out.append(dataclasses.replace(base, update=update, coarse=coarse, **picard))
    for spec in cfg.few_step:
        kind, K = parse_solver(spec)
        seq = SamplerConfig(kind=kind, num_inference_steps=K)
        out.append(seq)
        for update in cfg.updates:
            out.append(dataclasses.replace(seq, algorithm="picard", window=K, tol=cfg.tols[0], update=update))
    return out


@dataclass
class BenchJobConfig:
    """`parapolicy-bench` settings."""

    policy_path: str = "assets/default_policy"
    """Checkpoint directory (``assets/...``: the shipped ones, from any working directory)."""
    device: str = "cpu"
    """Torch device."""
    bench: SamplerBenchConfig = field(default_factory=SamplerBenchConfig)
    """What to measure."""

    def __post_init__(self) -> None:
        self.policy_path = shipped_path(self.policy_path)
        check_compile_mode(self.bench.compile, self.device)


@torch.no_grad()
def record_chunks(policy: DiffusionPolicy, cfg: SamplerBenchConfig) -> list[dict[str, Tensor]]:
    """Observation histories, conditioning and noise of ``n_chunks`` consecutive control steps.

    The environment gives what the policy observes (keypoints, or images and the agent position); the
    condition is the policy's own (`DiffusionPolicy.condition`: for an image policy the encoder runs
    here, once per chunk, so the samplers' timings leave it out, as a controller runs it once per plan).
    """
    pc = policy.config
    To, Ta = pc.n_obs_steps, pc.n_action_steps
    size = {}
    if pc.obs_type == "pixels_agent_pos":
        _, h, w = pc.vision.image_shape
        size = {"observation_height": h, "observation_width": w}
    env = PushTEnv(obs_type=env_obs_type(pc), **size)
    obs, _ = env.reset(options={"reset_to_state": reference_initial_state(cfg.episode_seed)})
    history = deque([env_observation(pc, obs)] * To, maxlen=To)
    gen = torch.Generator().manual_seed(cfg.noise_seed)
    chunks = []
    for _ in range(cfg.n_chunks):
        hist = history_observation(list(history))  # each key (To, ...)
        x_T, noise = draw_noise(policy.table, (1, pc.horizon, pc.action_dim), gen, device=policy.device)
        pred = policy.predict_action_chunk(hist, noise=(x_T, noise))
        cond = policy.condition(policy.validate_observation(hist, history=True))  # (1, To*C)
        chunks.append({"cond": cond, "x_T": x_T, "noise": noise, "reference": pred.plan})
        for action in pred.action[0].cpu().numpy()[:Ta]:
            obs, _, terminated, _, _ = env.step(action)
            history.append(obs)
            if terminated:
                break
    return chunks


@dataclass(frozen=True)
class PreparedSampler:
    """A sampler ready to run on recorded chunks: its step table and, with ``coarse="linear"``, the
    Jacobian of its linear coarse model (`coarse_model`)."""

    sampler: SamplerConfig
    table: StepTable
    jacobian: Tensor | None


def _prepare_run(
    policy: DiffusionPolicy, samplers: list[SamplerConfig], cfg: SamplerBenchConfig
) -> tuple[list[dict[str, Tensor]], list[PreparedSampler], float]:
    """The recorded chunks (`record_chunks`, driven by the sampler with the most steps, the first such:
    every other one takes the first K of its noise), each sampler checked against the policy with its
    table and coarse model and run on one warm-up chunk (allocator, caches), and the seconds the coarse
    models took to measure (`coarse_model`: on another episode's chunk, once per table)."""
    policy.set_sampler(max(samplers, key=lambda s: s.num_inference_steps))
    chunks = record_chunks(policy, cfg)
    tables = []
    for sampler in samplers:
        policy.config.check_sampler(sampler)
        tables.append(build_step_table(policy.config, sampler, policy.device))
    uses_linear = [s.is_parallel and s.coarse == "linear" for s in samplers]
    linear = {
        (s.kind, s.num_inference_steps): t
        for s, t, lin in zip(samplers, tables, uses_linear, strict=True)
        if lin
    }
    models, seconds = coarse_model(policy, cfg, linear) if linear else ({}, 0.0)
    prepared = [
        PreparedSampler(s, t, models[(s.kind, s.num_inference_steps)] if lin else None)
        for s, t, lin in zip(samplers, tables, uses_linear, strict=True)
    ]
    for p in prepared:
        _run_config(policy, p, chunks[:1], policy.denoise)
    return chunks, prepared, seconds


def _run_config(
    policy: DiffusionPolicy, prepared: PreparedSampler, chunks: list[dict[str, Tensor]], denoise: Any
) -> list[tuple[float, SampleResult]]:
    """Sample every chunk in order (warm-starting from the previous one if asked); per-chunk results.

    Every sampler starts from the chunk's x_T and takes the first K of its step noises (the
    deterministic kinds ignore them).
    """
    sampler, table = prepared.sampler, prepared.table
    Ta = policy.config.n_action_steps
    K = table.num_steps
    out: list[tuple[float, SampleResult]] = []
    previous = None
    for chunk in chunks:
        guess = warm_start_guess(previous, Ta) if (sampler.warm_start and previous is not None) else None
        seconds, res = timed_call(
            lambda chunk=chunk, guess=guess: run_sampler(
                sampler,
                denoise,
                chunk["x_T"],
                table,
                chunk["noise"][:K],
                chunk["cond"],
                x0_guess=guess,
                coarse_jacobian=prepared.jacobian,
            ),
            policy.device,
        )
        out.append((seconds, res))
        previous = res.sample
    return out


def _time_round(
    policy: DiffusionPolicy, prepared: list[PreparedSampler], chunks: list[dict[str, Tensor]]
) -> list[tuple[float, list[SampleResult]]]:
    """One interleaved round: every sampler in turn samples every chunk; each one's mean ms per chunk
    and its per-chunk results."""
    out = []
    for p in prepared:
        runs = _run_config(policy, p, chunks, policy.denoise)
        out.append((1e3 * sum(t for t, _ in runs) / len(runs), [r for _, r in runs]))
    return out


@torch.no_grad()
def interleaved_ms_per_chunk(
    policy: DiffusionPolicy, samplers: list[SamplerConfig], cfg: SamplerBenchConfig
) -> list[list[float]]:
    """Each sampler's mean ms per chunk in each of ``cfg.repeats`` interleaved rounds, batch 1, by the
    bench's protocol: the ``cfg.n_chunks`` observations and noises of one episode, one warm-up chunk
    each (`_prepare_run`), then rounds that run every sampler in turn, so a machine's drift hits them
    alike. Leaves the policy's sampler set to the one with the most steps."""
    policy.eval()
    chunks, prepared, _ = _prepare_run(policy, samplers, cfg)
    times: list[list[float]] = [[] for _ in samplers]
    with frozen_heap():  # no full garbage collection inside a timed chunk
        for round_index in range(cfg.repeats):
            for i, (ms, _) in enumerate(_time_round(policy, prepared, chunks)):
                times[i].append(ms)
            if cfg.progress:
                print(f"latency round {round_index + 1}/{cfg.repeats}", file=sys.stderr, flush=True)
    return times


def coarse_model(
    policy: DiffusionPolicy, cfg: SamplerBenchConfig, tables: dict[tuple[str, int], StepTable]
) -> tuple[dict[tuple[str, int], Tensor], float]:
    """The linear coarse model of each table, measured on the first chunk of episode ``episode_seed + 1``
    (noise seed + 1) along its sequential trajectory, and the seconds it took in all."""
    seeds = {"episode_seed": cfg.episode_seed + 1, "noise_seed": cfg.noise_seed + 1}
    chunk = record_chunks(policy, dataclasses.replace(cfg, n_chunks=1, **seeds))[0]
    out, seconds = {}, 0.0
    for (kind, K), table in tables.items():
        seq = SamplerConfig(kind=kind, num_inference_steps=K)
        x_T, noise, cond = chunk["x_T"], chunk["noise"][:K], chunk["cond"]
        res = run_sampler(seq, policy.denoise, x_T, table, noise, cond, return_trajectory=True)
        t, out[(kind, K)] = timed_call(
            lambda res=res, table=table: x0_jacobian(policy.denoise, table, res.trajectory, chunk["cond"]),
            policy.device,
        )
        seconds += t
    return out, seconds


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _load_summary(rounds: list[dict[str, Any]], usable_cpus: int | None) -> dict[str, Any]:
    """Spread of the per-round load probes and a verdict: quiet when others kept < 10% of the CPUs busy."""
    foreign = [r["foreign_busy_cpus"] for r in rounds if r["foreign_busy_cpus"] is not None]
    out: dict[str, Any] = {
        "cpu_per_wall": _spread([r["cpu_per_wall"] for r in rounds]),
        "loadavg": _spread([v for r in rounds for v in (r["loadavg_before"], r["loadavg_after"])]),
        "foreign_busy_cpus": _spread(foreign) if foreign else None,
    }
    if foreign and usable_cpus:
        out["quiet"] = max(foreign) < 0.1 * usable_cpus
    else:
        out["quiet"] = None
    return out


def _timed_rounds(
    policy: DiffusionPolicy,
    prepared: list[PreparedSampler],
    chunks: list[dict[str, Tensor]],
    cfg: SamplerBenchConfig,
) -> tuple[list[list[float]], list[list[float]], list[list[SampleResult]], list[dict[str, Any]]]:
    """``cfg.repeats`` interleaved rounds (`_time_round`), each followed by one instrumented pass per
    sampler (`TimedDenoiser`): per sampler its ms per chunk and % of wall time outside the denoiser in
    each round and its results of the last round; and each round's load probe."""
    times: list[list[float]] = [[] for _ in prepared]
    outside: list[list[float]] = [[] for _ in prepared]
    results: list[list[SampleResult]] = [[] for _ in prepared]
    probes = []
    for round_index in range(cfg.repeats):
        with LoadProbe() as probe:
            for i, (ms, res) in enumerate(_time_round(policy, prepared, chunks)):
                times[i].append(ms)  # ms per chunk, this round
                results[i] = res
        probes.append(probe.result)
        for i, ps in enumerate(prepared):
            timed = TimedDenoiser(policy.denoise, policy.device)
            wall, _ = timed_call(
                lambda ps=ps, timed=timed: _run_config(policy, ps, chunks, timed), policy.device
            )
            outside[i].append(100.0 * max(0.0, 1.0 - timed.seconds / wall))
        if cfg.progress:
            p = probe.result
            foreign = "n/a" if p["foreign_busy_cpus"] is None else f"{p['foreign_busy_cpus']:.2f}"
            print(
                f"bench round {round_index + 1}/{cfg.repeats}: {len(prepared)} samplers timed in "
                f"{p['wall_s']:.1f} s, loadavg {p['loadavg_after']:.1f}, CPUs busy with others {foreign}",
                file=sys.stderr,
                flush=True,
            )
    return times, outside, results, probes


def _result_row(
    policy: DiffusionPolicy,
    sampler: SamplerConfig,
    chunks: list[dict[str, Tensor]],
    results: list[SampleResult],
    reference: list[SampleResult],
    times: list[float],
    outside: list[float],
) -> dict[str, Any]:
    """One sampler's row: its settings, the spread of its ms per chunk over the rounds, its statistics
    and its max |difference| in px to its own rule's sequential samples (``reference``) and to the
    recorded baseline plans (speedups are added by the caller, who knows the baseline)."""
    plans = [policy.normalizer.unnormalize("action", r.sample) for r in results]
    own_diff = max(
        float((p - policy.normalizer.unnormalize("action", q.sample)).abs().max())
        for p, q in zip(plans, reference, strict=True)
    )
    base_diff = max(float((p - c["reference"]).abs().max()) for p, c in zip(plans, chunks, strict=True))
    return {
        "name": sampler_name(sampler),
        "kind": sampler.kind,
        "num_inference_steps": sampler.num_inference_steps,
        "algorithm": sampler.algorithm,
        "update": sampler.update if sampler.is_parallel else None,
        "coarse": sampler.coarse if sampler.is_parallel and sampler.update == "parareal" else None,
        "window": sampler.window if sampler.is_parallel else None,
        "tol": sampler.tol if sampler.is_parallel else None,
        "warm_start": sampler.warm_start,
        "ms_per_chunk": _spread(times),
        "ms_per_chunk_rounds": times,
        "iterations": float(np.mean([r.iterations for r in results])),
        "model_calls": float(np.mean([r.model_calls for r in results])),
        "model_rows": float(np.mean([r.rows_evaluated for r in results])),
        "converged": all(r.all_converged for r in results),
        "max_abs_diff_px": own_diff,
        "max_abs_diff_to_baseline_px": base_diff,
        # share of wall time outside the denoiser: Picard bookkeeping (sequential: the step math)
        "outside_denoiser_pct": statistics.median(outside),
        "outside_denoiser_pct_range": [min(outside), max(outside)],
    }


@torch.no_grad()
def run_sampler_benchmark(policy: DiffusionPolicy, cfg: SamplerBenchConfig) -> dict[str, Any]:
    """Measure every sampler of `bench_samplers`; returns the rows, the load probes and the cost curve.

    Rounds interleave the samplers (ABAB...): each round times every sampler once, then runs one
    instrumented pass of each (`TimedDenoiser`) for the share of time outside the denoiser.
    """
    policy.eval()
    policy.set_compile(cfg.compile)
    samplers = bench_samplers(cfg)  # the baseline first, with the most steps: it drives the episode
    names = [sampler_name(s) for s in samplers]
    chunks, prepared, calibration_s = _prepare_run(policy, samplers, cfg)
    with frozen_heap():  # no full garbage collection inside a timed chunk
        times, outside, results, probes = _timed_rounds(policy, prepared, chunks, cfg)
    base_ms = statistics.median(times[0])
    seq_ms = {
        n: statistics.median(t) for n, s, t in zip(names, samplers, times, strict=True) if not s.is_parallel
    }
    fastest_seq = min(seq_ms, key=seq_ms.get)
    own_seq = {(s.kind, s.num_inference_steps): i for i, s in enumerate(samplers) if not s.is_parallel}
    rows = []
    for i, sampler in enumerate(samplers):
        reference = results[own_seq[(sampler.kind, sampler.num_inference_steps)]]
        row = _result_row(policy, sampler, chunks, results[i], reference, times[i], outside[i])
        row["speedup"] = base_ms / row["ms_per_chunk"]["median"]
        row["speedup_vs_fastest_sequential"] = seq_ms[fastest_seq] / row["ms_per_chunk"]["median"]
        # paired: the baseline's and this sampler's times of the same round (the spread of a run)
        row["speedup_per_round"] = [b / t for b, t in zip(times[0], times[i], strict=True)]
        rows.append(row)
    curve = denoiser_cost_curve(policy, tuple(cfg.batch_sizes), use_cache=False)
    machine = machine_info(torch.get_num_threads())
    return {
        "rows": rows,
        "baseline": names[0],
        "fastest_sequential": fastest_seq,
        "denoiser_ms_per_call": {str(k): v for k, v in curve.items()},
        "n_chunks": len(chunks),
        "coarse_calibration_s": calibration_s,
        "rounds": cfg.repeats,
        "machine": machine,
        "load": {"rounds": probes, **_load_summary(probes, machine["usable_cpus"])},
    }


def _continuation(policy: DiffusionPolicy, previous: Tensor, delay: int) -> Inpaint:
    """The `Inpaint` of a plan requested Ta ticks after ``previous`` (B, H, Da, environment units)."""
    cfg, Ta, start = policy.config, policy.config.n_action_steps, policy.config.action_start
    rows = previous[0, start:].cpu().numpy()  # (H - start, Da) executable rows
    k = known_rows(rows, Ta, delay, cfg.horizon, start, last_action=rows[Ta - 1])
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
    for update in cfg.updates:
        for w in cfg.windows:
            for tol in cfg.tols:
                configs[f"{update} w={w} tol={tol:g}"] = dataclasses.replace(
                    seq, algorithm="picard", window=w, tol=tol, update=update
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
    with frozen_heap():  # no full garbage collection inside a timed chunk
        rows = [
            _inpaint_row(name, smp, once, chunks[1:], known, cfg.repeats) for name, smp in configs.items()
        ]
    return {"inpaint_rows": rows, "delay": cfg.inpaint_delay, "n_chunks": len(known)}


def _inpaint_row(
    name: str,
    sampler: SamplerConfig,
    once: Callable[[SamplerConfig, dict[str, Tensor], Inpaint | None], tuple[float, SampleResult]],
    chunks: list[dict[str, Tensor]],
    known: list[Inpaint],
    repeats: int,
) -> dict[str, Any]:
    """One sampler's row of `run_inpaint_overhead`: each chunk plain and inpainted back to back, in
    alternating order per repeat; medians of the chunk time and of the time per model row."""
    ms: dict[bool, list[float]] = {False: [], True: []}
    iters: dict[bool, list[int]] = {False: [], True: []}
    per_row: dict[bool, list[float]] = {False: [], True: []}  # ms per model row evaluated
    for rep in range(repeats):
        for chunk, ip in zip(chunks, known, strict=True):
            for use in (False, True) if rep % 2 == 0 else (True, False):
                t, res = once(sampler, chunk, ip if use else None)
                ms[use].append(t)
                iters[use].append(res.iterations)
                per_row[use].append(t / res.rows_evaluated)
    plain, inp = statistics.median(ms[False]), statistics.median(ms[True])
    row_plain, row_inp = statistics.median(per_row[False]), statistics.median(per_row[True])
    return {
        "name": name,
        "ms_plain": _spread(ms[False]),
        "ms_inpaint": _spread(ms[True]),
        "overhead_pct": 100.0 * (inp / plain - 1.0),
        # the imposition's own cost, apart from any change in the iteration count
        "overhead_per_row_pct": 100.0 * (row_inp / row_plain - 1.0),
        "iterations_plain": float(np.mean(iters[False])),
        "iterations_inpaint": float(np.mean(iters[True])),
    }


def format_inpaint_overhead(result: dict[str, Any]) -> str:
    """A plain-text table of `run_inpaint_overhead`'s result."""
    head = (
        f"{'sampler':<24} {'ms plain':>9} {'ms inpaint':>10} {'overhead %':>10} {'per row %':>9} "
        f"{'iters plain/inpaint':>20}"
    )
    lines = [head, "-" * len(head)]
    for r in result["inpaint_rows"]:
        its = f"{r['iterations_plain']:.1f}/{r['iterations_inpaint']:.1f}"
        lines.append(
            f"{r['name']:<24} {r['ms_plain']['median']:>9.1f} {r['ms_inpaint']['median']:>10.1f} "
            f"{r['overhead_pct']:>10.1f} {r['overhead_per_row_pct']:>9.1f} {its:>20}"
        )
    return "\n".join(lines)


def _paired_speedup_line(result: dict[str, Any]) -> str:
    """The fastest parallel sampler of the baseline's rule and K (the bench's grid, never empty): its
    speedup over the baseline round by round (both times from the same round), median [min, max]:
    the spread of one run."""
    base = result["rows"][0]
    grid = [
        r
        for r in result["rows"][1:]
        if r["algorithm"] != "sequential"
        and (r["kind"], r["num_inference_steps"]) == (base["kind"], base["num_inference_steps"])
    ]
    best = min(grid, key=lambda r: r["ms_per_chunk"]["median"])
    per_round = best["speedup_per_round"]
    return (
        f"paired per round: {best['name']} over {base['name']} in each of the {len(per_round)} rounds: "
        f"median {statistics.median(per_round):.2f}x [{min(per_round):.2f}, {max(per_round):.2f}]"
    )


def format_sampler_benchmark(result: dict[str, Any]) -> str:
    """A plain-text table of `run_sampler_benchmark`'s result, with the machine and its load."""
    head = (
        f"{'sampler':<40} {'ms/chunk median [min, max]':<28} {'x base':>6} {'x fast':>6} {'iters':>6} "
        f"{'calls':>6} {'rows':>7} {'|d| own':>8} {'|d| base':>8} {'outside%':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        ms = r["ms_per_chunk"]
        timing = f"{ms['median']:>8.1f} [{ms['min']:.1f}, {ms['max']:.1f}]"
        lines.append(
            f"{r['name']:<40} {timing:<28} {r['speedup']:>6.2f} {r['speedup_vs_fastest_sequential']:>6.2f} "
            f"{r['iterations']:>6.1f} {r['model_calls']:>6.1f} {r['model_rows']:>7.1f} "
            f"{r['max_abs_diff_px']:>8.4f} {r['max_abs_diff_to_baseline_px']:>8.3f} "
            f"{r['outside_denoiser_pct']:>8.1f}"
        )
    lines.append(
        f"x base: speedup over {result['baseline']}; x fast: over the fastest sequential sampler here "
        f"({result['fastest_sequential']}; compare scores with parapolicy-eval before picking one). "
        "|d| own / base: max |difference| in px to the same rule's sequential sample / to the baseline's."
    )
    lines.append(_paired_speedup_line(result))
    if any(r.get("coarse") == "linear" for r in result["rows"]):
        lines.append(
            f"linear: Parareal's linear coarse model, measured once before the rounds on another episode's "
            f"first chunk in {result['coarse_calibration_s']:.2f} s (not in the chunk times)"
        )
    curve = result["denoiser_ms_per_call"]
    lines.append(
        "denoiser ms per call by batch rows: " + ", ".join(f"{b}: {ms:.2f}" for b, ms in curve.items())
    )
    m, load = result["machine"], result["load"]
    lines.append(
        f"machine: {m['cpu_model']}, {m['usable_cpus']} usable CPUs, torch threads {m['torch_threads']}; "
        f"{result['rounds']} interleaved rounds of {result['n_chunks']} chunks"
    )
    foreign = load["foreign_busy_cpus"]
    foreign_txt = (
        "n/a" if foreign is None else f"{foreign['median']:.2f} [{foreign['min']:.2f}, {foreign['max']:.2f}]"
    )
    verdict = {True: "quiet", False: "LOADED: timings are not comparable with a quiet run", None: "unknown"}
    lines.append(
        f"load: 1-min loadavg {load['loadavg']['min']:.1f}-{load['loadavg']['max']:.1f}, CPUs busy with "
        f"other processes {foreign_txt}, this process's CPU/wall {load['cpu_per_wall']['median']:.2f} "
        f"-> {verdict[load['quiet']]}"
    )
    return "\n".join(lines)
