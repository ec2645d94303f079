"""The comparison job (`parapolicy-compare`) and the profiling job (`parapolicy-profile`); no hydra.

`run_compare` runs every configured sampler (default: sequential DDPM-100 and ParaDDPM) in every
configured control mode (default: ``frozen`` for sample quality over the 50 reference test seeds,
batched, then ``realtime_sim`` at 10 Hz over the first ``realtime_episodes`` (6) of those seeds, one
plan at a time) on the same seeds and the same per-episode noise, and writes into the run folder:

- ``compare.json``: the side-by-side table, every run's aggregated metrics and latency summary, the
  differences to the baseline, notes (e.g. when the samplers did not draw identical noise), provenance;
- ``<sampler>/eval_info.json``: lerobot-compatible per-episode records of the first mode, with every
  mode's block under ``by_mode``; ``<sampler>/latency/steps_<mode>.csv`` and ``chunks_<mode>.csv``;
- ``plots/*.png`` (latency CDF and histogram, per-step timeline, per-episode reward, baseline vs
  parallel) and ``videos/<sampler>_<mode>_episode_<i>.mp4``.

`run_profile` runs one sampler in one mode and writes ``latency/steps.csv``, ``latency/chunks.csv``,
``latency/summary.json`` (percentiles, miss rate, time per section), ``eval_info.json`` and plots.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.control import plots
from parapolicy.policy.control.evaluation import EvalConfig
from parapolicy.policy.control.latency import write_csv
from parapolicy.policy.control.rollout import (
    MODES,
    ControlConfig,
    LatencyModel,
    RolloutResult,
    check_policy_settings,
    run_rollouts,
)
from parapolicy.policy.model.checkpoint import CheckpointError
from parapolicy.policy.model.policy import DiffusionPolicy
from parapolicy.policy.model.pretrained import load_policy
from parapolicy.policy.run_info import run_info
from parapolicy.policy.runtime.auto_window import resolve_sampler

SCORE_TOLERANCE = 0.03  # acceptance: frozen-mode mean scores of the samplers differ by at most this


@dataclass
class SamplerEntry:
    """One sampler of the comparison."""

    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """The sampler settings."""
    latency_model: str | None = None
    """``realtime_sim`` latency for this sampler (e.g. ``fixed:550``); None: ``control.latency_model``."""

    def __post_init__(self) -> None:
        if self.latency_model is not None:
            LatencyModel.parse(self.latency_model)


def default_samplers() -> dict[str, SamplerEntry]:
    """The named samplers `CompareConfig.run` picks from.

    ``sequential``: DDPM-100, the reference. ``paraddpm``: the same DDPM-100 solved by Picard iteration
    (window 8, tol 0.1, model-free x̂₀ roll-out refill), drawing exactly the sequential sampler's noise.
    ``paraddpm_warm``: the same with the first window rolled out from the previous chunk's sample
    (shifted along the horizon) instead of x̂₀ = 0. ``paraddpm_crn``: warm start with common random
    numbers (different noise). ``ddim``: DDIM with 16 steps, the usual fast baseline.
    """
    return {
        "sequential": SamplerEntry(SamplerConfig()),
        "paraddpm": SamplerEntry(SamplerConfig(algorithm="picard", window=8)),
        "paraddpm_warm": SamplerEntry(SamplerConfig(algorithm="picard", window=8, warm_start=True)),
        "paraddpm_crn": SamplerEntry(
            SamplerConfig(algorithm="picard", window=8, warm_start=True, common_random_numbers=True)
        ),
        "ddim": SamplerEntry(SamplerConfig(kind="ddim", num_inference_steps=16)),
    }


def _compare_eval() -> EvalConfig:
    return EvalConfig(n_episodes=50, batch_size=50, max_videos=2)


@dataclass
class CompareConfig:
    """`parapolicy-compare` settings."""

    policy_path: str = "assets/default_policy"
    """Checkpoint directory (config.json, model.safetensors, normalizer.safetensors)."""
    device: str = "cpu"
    """Torch device."""
    samplers: dict[str, SamplerEntry] = field(default_factory=default_samplers)
    """Named samplers (edit one with ``samplers.<name>.sampler.window=16``; add new names in a YAML)."""
    run: list[str] = field(default_factory=lambda: ["sequential", "paraddpm"])
    """The samplers to compare, in order (names from ``samplers``)."""
    baseline: str = "sequential"
    """The sampler the others are compared with (speedup, score difference)."""
    modes: list[str] = field(default_factory=lambda: ["frozen", "realtime_sim"])
    """Control modes to run, in order (``frozen``, ``realtime_sim``, ``wallclock``)."""
    eval: EvalConfig = field(default_factory=_compare_eval)
    """Episodes, seeds, batching (frozen), videos (per sampler and mode), noise seed."""
    realtime_episodes: int = 6
    """Episodes (the first seeds) of the time-aware modes, run one plan at a time; 0: all. The default
    keeps the whole default run under 10 minutes on 2 CPU cores (docs/control_modes.md)."""
    control: ControlConfig = field(default_factory=ControlConfig)
    """Controller settings (its ``mode`` is set per run from ``modes``)."""
    plots: bool = True
    """Write PNG plots under ``plots/``."""
    num_threads: int | None = None
    """torch intra-op threads (None: torch's default)."""

    def __post_init__(self) -> None:
        unknown = [n for n in self.run if n not in self.samplers]
        if not self.run or unknown or len(set(self.run)) != len(self.run):
            raise ValueError(
                f"run must list distinct sampler names from {sorted(self.samplers)}, got {list(self.run)}"
            )
        if self.baseline not in self.run:
            raise ValueError(f"baseline={self.baseline!r} is not one of run={list(self.run)}")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes or len(set(self.modes)) != len(self.modes):
            raise ValueError(f"modes must be distinct values from {MODES}, got {list(self.modes)}")
        if not 0 <= self.realtime_episodes <= self.eval.n_episodes:
            raise ValueError(
                f"realtime_episodes must be in [0, eval.n_episodes={self.eval.n_episodes}], "
                f"got {self.realtime_episodes}"
            )
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or null, got {self.num_threads}")
        for name in self.samplers:
            if not name or any(c in name for c in "/\\ ") or name.startswith("."):
                raise ValueError(f"sampler name {name!r} must be a plain folder name")


@dataclass
class ProfileConfig:
    """`parapolicy-profile` settings."""

    policy_path: str = "assets/default_policy"
    """Checkpoint directory."""
    device: str = "cpu"
    """Torch device."""
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(algorithm="picard", window=8))
    """The sampler to profile (default: ParaDDPM, window 8, as `parapolicy-compare`'s ``paraddpm``)."""
    control: ControlConfig = field(default_factory=lambda: ControlConfig(mode="realtime_sim"))
    """Controller settings (default: realtime_sim at 10 Hz, measured latency)."""
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(n_episodes=3, batch_size=1, max_videos=0))
    """Episodes and seeds (frozen mode batches ``batch_size`` episodes; the default 1 times single plans)."""
    plots: bool = True
    """Write PNG plots under ``plots/``."""
    num_threads: int | None = None
    """torch intra-op threads (None: torch's default)."""

    def __post_init__(self) -> None:
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or null, got {self.num_threads}")


# --------------------------------------------------------------------------------------------------
# shared helpers
def open_policy(path: str, device: str) -> DiffusionPolicy:
    """Load the checkpoint, turning a missing or broken one into a message that says what to do."""
    try:
        return load_policy(path, device=device)
    except CheckpointError as exc:
        raise CheckpointError(
            f"cannot load policy_path={path!r}: {exc}. Point policy_path at a checkpoint directory "
            "(config.json, model.safetensors, normalizer.safetensors), e.g. a parapolicy-train run's "
            "checkpoints/last/pretrained_model"
        ) from exc


def claim_outputs(out: Path, names: list[str]) -> None:
    """Refuse to reuse a run folder that already holds this job's outputs (runs never overwrite)."""
    taken = [n for n in names if (out / n).exists()]
    if taken:
        raise FileExistsError(f"run folder {out} already holds {taken}; results are never overwritten")
    out.mkdir(parents=True, exist_ok=True)


def _progress(total: int, enabled: bool, desc: str) -> tqdm:
    """A control-step progress bar; off when disabled or when stderr is not a terminal (tqdm's None)."""
    return tqdm(total=total, desc=desc, unit="step", disable=None if enabled else True, dynamic_ncols=True)


def run_block(result: RolloutResult) -> dict[str, Any]:
    """The per-mode block of ``eval_info.json`` / ``compare.json``."""
    return {**result.eval_info(), "warmup_ms": result.warmup_ms}


def _table_row(name: str, mode: str, result: RolloutResult) -> dict[str, Any]:
    agg, lat = result.aggregated, result.latency
    ch = lat["chunk"]
    return {
        "sampler": name,
        "mode": mode,
        "batch_size": lat["batch_size"],
        "n_episodes": agg["n_episodes"],
        "mean_score": agg["mean_score"],
        "pc_success": agg["pc_success"],
        "pc_success_ci95": agg["pc_success_ci95"],
        "step_p50_ms": lat["p50_ms"],
        "step_p90_ms": lat["p90_ms"],
        "step_p99_ms": lat["p99_ms"],
        "step_max_ms": lat["max_ms"],
        "chunk_p50_ms": ch["p50_ms"],
        "chunk_p99_ms": ch["p99_ms"],
        "chunk_compute_p50_ms": ch["compute"]["p50_ms"],
        "model_calls_per_chunk": ch["mean_model_calls"],
        "model_evals_per_chunk": ch["mean_model_evals"],
        "iters_per_chunk": ch["mean_picard_iters"] if result.sampler.is_parallel else None,
        "converged_rate": ch["converged_rate"],
        "ticks_lost_per_episode": agg["mean_ticks_lost"],
        "held_steps": agg["total_held_steps"],
        "fallback_steps": agg["total_fallback_steps"],
        "miss_rate": lat["miss_rate"],
        "eval_s": agg["eval_s"],
        "cpu_s": agg["cpu_s"],
    }


def _fmt(v: Any, spec: str = ".1f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The side-by-side table printed by `parapolicy-compare` (plain text, one line per run)."""
    head = (
        f"{'sampler':<12} {'mode':<12} {'B':>3} {'eps':>4} {'score':>6} {'success % [95% CI]':>20} "
        f"{'step p50/p90/p99/max ms':>28} {'chunk p50/p99 ms':>17} {'calls':>6} {'iters':>6} "
        f"{'lost/ep':>7} {'miss%':>6} {'speedup':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lo, hi = r["pc_success_ci95"]
        step = "/".join(
            _fmt(r[k], ".2f" if (r[k] or 0) < 10 else ".0f")
            for k in ("step_p50_ms", "step_p90_ms", "step_p99_ms", "step_max_ms")
        )
        chunk = f"{_fmt(r['chunk_p50_ms'], '.0f')}/{_fmt(r['chunk_p99_ms'], '.0f')}"
        success = f"{r['pc_success']:.0f} [{lo:.0f}, {hi:.0f}]"
        lines.append(
            f"{r['sampler']:<12} {r['mode']:<12} {r['batch_size']:>3} {r['n_episodes']:>4} "
            f"{r['mean_score']:>6.3f} {success:>20} {step:>28} "
            f"{chunk:>17} {_fmt(r['model_calls_per_chunk']):>6} {_fmt(r['iters_per_chunk']):>6} "
            f"{_fmt(r['ticks_lost_per_episode']):>7} {100 * r['miss_rate']:>6.1f} "
            f"{_fmt(r.get('speedup'), '.2f'):>7}"
        )
    return "\n".join(lines)


def _noise_notes(cfg: CompareConfig) -> list[str]:
    notes = []
    chosen = {n: cfg.samplers[n] for n in cfg.run}
    ks = {e.sampler.num_inference_steps for e in chosen.values()}
    if len(ks) > 1:
        notes.append(
            f"samplers use different num_inference_steps {sorted(ks)}: their noise shapes differ, so they "
            "do not draw identical noise (same seeds, independent noise)"
        )
    crn = [n for n, e in chosen.items() if e.sampler.common_random_numbers]
    if crn:
        notes.append(
            f"{crn} use common_random_numbers: each chunk reuses the previous chunk's noise shifted by the "
            "executed steps, so after the first chunk their noise differs from the other samplers' "
            "(statistically equivalent, not identical)"
        )
    return notes


# --------------------------------------------------------------------------------------------------
# compare
def run_compare(cfg: CompareConfig, out: Path) -> dict[str, Any]:
    """Run the comparison and write its outputs into ``out``; returns the ``compare.json`` content.

    Raises:
        CheckpointError: the checkpoint is missing or invalid (before anything runs).
        ValueError: settings the checkpoint cannot run (before anything runs).
        FileExistsError: ``out`` already holds a comparison.
    """
    out = Path(out)
    claim_outputs(out, ["compare.json", *cfg.run])
    load_start = os.getloadavg()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    policy = open_policy(cfg.policy_path, cfg.device)
    check_policy_settings(policy, cfg.control, [cfg.samplers[n].sampler for n in cfg.run])
    samplers, window_choice = {}, {}
    for n in cfg.run:  # window="auto": measured on this device once (cached), before any rollout
        samplers[n], report = resolve_sampler(policy, cfg.samplers[n].sampler)
        if report is not None:
            window_choice[n] = {"window": samplers[n].window, **report}
    video_dir = out / "videos" if cfg.eval.max_videos else None

    plan = []  # (mode, name, eval cfg, control)
    for mode in cfg.modes:
        if mode == "frozen":
            ec = cfg.eval
        else:
            n = cfg.realtime_episodes or cfg.eval.n_episodes
            ec = dataclasses.replace(cfg.eval, n_episodes=n, batch_size=1)
        for name in cfg.run:
            entry = cfg.samplers[name]
            model = cfg.control.latency_model if entry.latency_model is None else entry.latency_model
            control = dataclasses.replace(
                cfg.control, mode=mode, latency_model=model if mode == "realtime_sim" else "measured"
            )
            plan.append((mode, name, ec, control))

    total = sum(ec.n_episodes * ec.max_steps for _, _, ec, _ in plan)
    bar = _progress(total, cfg.eval.progress, "compare")
    results: dict[str, dict[str, RolloutResult]] = {n: {} for n in cfg.run}
    try:
        for mode, name, ec, control in plan:
            bar.set_description(f"compare {name}/{mode}")
            policy.set_sampler(samplers[name])
            results[name][mode] = run_rollouts(
                policy,
                dataclasses.replace(ec, progress=False),
                control,
                video_dir=video_dir,
                video_prefix=f"{name}_{mode}_episode_",
                on_steps=bar.update,
            )
    finally:
        bar.close()

    rows = []
    for mode in cfg.modes:
        base = results[cfg.baseline][mode]
        base_ms = base.latency["chunk"]["compute"]["p50_ms"]
        for name in cfg.run:
            r = results[name][mode]
            row = _table_row(name, mode, r)
            ms = r.latency["chunk"]["compute"]["p50_ms"]
            row["speedup"] = base_ms / ms if base_ms and ms else None
            row["score_diff_vs_baseline"] = r.aggregated["mean_score"] - base.aggregated["mean_score"]
            rows.append(row)

    for name in cfg.run:
        sdir = out / name
        by_mode = {mode: run_block(results[name][mode]) for mode in cfg.modes}
        first = cfg.modes[0]
        info = {
            **by_mode[first],
            "by_mode": {m: b for m, b in by_mode.items() if m != first},
            "run": {**run_info(cfg.device), "policy_path": cfg.policy_path, "sampler_name": name},
        }
        sdir.mkdir(parents=True, exist_ok=True)
        (sdir / "eval_info.json").write_text(json.dumps(info, indent=2))
        for mode in cfg.modes:
            r = results[name][mode]
            write_csv(r.steps, sdir / "latency" / f"steps_{mode}.csv", {"sampler": name, "mode": mode})
            write_csv(r.chunks, sdir / "latency" / f"chunks_{mode}.csv", {"sampler": name, "mode": mode})

    notes = _noise_notes(cfg)
    if "frozen" in cfg.modes and cfg.eval.batch_size > 1:
        notes.append(
            f"frozen latencies are those of batched calls (up to {cfg.eval.batch_size} episodes per plan); "
            "per-plan latencies come from the time-aware modes (one plan at a time)"
        )
    checks: dict[str, Any] = {}
    if "frozen" in cfg.modes:
        diffs = {r["sampler"]: r["score_diff_vs_baseline"] for r in rows if r["mode"] == "frozen"}
        checks["frozen_score_within_tolerance"] = {
            "tolerance": SCORE_TOLERANCE,
            "diff_vs_baseline": diffs,
            "ok": all(abs(d) <= SCORE_TOLERANCE for d in diffs.values()),
        }
    for mode in (m for m in cfg.modes if m != "frozen"):
        diffs = {r["sampler"]: r["score_diff_vs_baseline"] for r in rows if r["mode"] == mode}
        checks[f"{mode}_score_not_below_baseline"] = {
            "diff_vs_baseline": diffs,
            "ok": all(d >= 0 for d in diffs.values()),
            "n_episodes": cfg.realtime_episodes or cfg.eval.n_episodes,
        }
    machine = {"load_avg_1m_start": load_start[0], "load_avg_1m_end": os.getloadavg()[0]}
    summary = {
        "table": rows,
        "baseline": cfg.baseline,
        "notes": notes,
        "checks": checks,
        "window_choice": window_choice,
        "runs": {n: {m: run_block(r) for m, r in per.items()} for n, per in results.items()},
        "config": dataclasses.asdict(cfg),
        "run": {**run_info(cfg.device), **machine, "policy_path": cfg.policy_path},
    }
    for per in summary["runs"].values():
        for block in per.values():
            block.pop("per_episode")  # per-episode records live in <sampler>/eval_info.json
    if cfg.plots:
        summary["plots"] = [str(p) for p in compare_plots(cfg, results, out / "plots")]
    (out / "compare.json").write_text(json.dumps(summary, indent=2))
    return summary


def compare_plots(cfg: CompareConfig, results: dict[str, dict[str, RolloutResult]], pdir: Path) -> list[Path]:
    """The comparison's PNGs; latency plots use the last time-aware mode (else the first mode)."""
    timed = [m for m in cfg.modes if m != "frozen"]
    lmode = timed[-1] if timed else cfg.modes[0]
    budget = cfg.control.effective_budget_ms
    step_ms = {n: results[n][lmode].steps.column("latency_ms") for n in cfg.run}
    ok = {n: results[n][lmode].chunks.column("fault") == 0 for n in cfg.run}
    chunk_ms = {n: results[n][lmode].chunks.column("latency_ms")[ok[n]] for n in cfg.run}
    paths = [
        plots.latency_cdf(step_ms, chunk_ms, pdir / "latency_cdf.png", budget, f"latency, {lmode}"),
        plots.latency_hist(chunk_ms, pdir / "latency_hist.png", budget, f"plan latency, {lmode}"),
    ]
    timeline = {}
    for n in cfg.run:
        steps = results[n][lmode].steps
        first = steps.column("episode") == steps.column("episode")[:1].max(initial=0)
        timeline[n] = (
            steps.column("step")[first],
            steps.column("latency_ms")[first],
            steps.column("missed")[first],
        )
    paths.append(
        plots.latency_timeline(timeline, pdir / "latency_timeline.png", budget, f"first episode, {lmode}")
    )
    rewards = {
        f"{n}/{m}": [e["max_reward"] for e in results[n][m].per_episode] for m in cfg.modes for n in cfg.run
    }
    paths.append(plots.episode_rewards(rewards, pdir / "episode_reward.png"))
    for m in cfg.modes:
        base = [e["max_reward"] for e in results[cfg.baseline][m].per_episode]
        others = {
            n: [e["max_reward"] for e in results[n][m].per_episode] for n in cfg.run if n != cfg.baseline
        }
        if others:
            paths.append(
                plots.sequential_vs_parallel(
                    base, others, pdir / f"seq_vs_parallel_{m}.png", cfg.baseline, f"per-episode reward, {m}"
                )
            )
    return paths


# --------------------------------------------------------------------------------------------------
# profile
def run_profile(cfg: ProfileConfig, out: Path) -> dict[str, Any]:
    """Profile one sampler per control step; writes CSVs, ``latency/summary.json``, plots.

    Returns:
        The summary (``latency`` block with percentiles, miss rate and ``sections``; aggregated metrics).
    """
    out = Path(out)
    claim_outputs(out, ["latency", "eval_info.json"])
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    policy = open_policy(cfg.policy_path, cfg.device)
    check_policy_settings(policy, cfg.control, [cfg.sampler])
    sampler, report = resolve_sampler(policy, cfg.sampler)  # window="auto": measured here
    window_choice = None if report is None else {"window": sampler.window, **report}
    policy.set_sampler(sampler)
    ec = cfg.eval
    bar = _progress(ec.n_episodes * ec.max_steps, ec.progress, f"profile {cfg.control.mode}")
    try:
        result = run_rollouts(
            policy,
            dataclasses.replace(ec, progress=False),
            cfg.control,
            video_dir=out / "videos" if ec.max_videos else None,
            on_steps=bar.update,
        )
    finally:
        bar.close()
    ldir = out / "latency"
    write_csv(result.steps, ldir / "steps.csv", {"sampler": cfg.sampler.algorithm, "world_size": 1})
    write_csv(result.chunks, ldir / "chunks.csv", {"sampler": cfg.sampler.algorithm})
    summary = {
        "latency": result.latency,
        "aggregated": result.aggregated,
        "sampler": dataclasses.asdict(result.sampler),
        "budget_choice": result.budget,
        "window_choice": window_choice,
        "control": dataclasses.asdict(cfg.control),
        "run": {**run_info(cfg.device), "policy_path": cfg.policy_path},
    }
    (ldir / "summary.json").write_text(json.dumps(summary, indent=2))
    info = {**run_block(result), "run": summary["run"]}
    (out / "eval_info.json").write_text(json.dumps(info, indent=2))
    if cfg.plots:
        summary["plots"] = [str(p) for p in profile_plots(result, cfg.sampler.algorithm, out / "plots")]
    return summary


def profile_plots(result: RolloutResult, label: str, pdir: Path) -> list[Path]:
    """Histogram, CDF and per-step timeline of one profiled run."""
    budget = result.latency["budget_ms"]
    steps, chunks = result.steps, result.chunks
    ok = chunks.column("fault") == 0
    first = steps.column("episode") == steps.column("episode")[:1].max(initial=0)
    return [
        plots.latency_hist({label: chunks.column("latency_ms")[ok]}, pdir / "latency_hist.png", budget),
        plots.latency_cdf(
            {label: steps.column("latency_ms")},
            {label: chunks.column("latency_ms")[ok]},
            pdir / "latency_cdf.png",
            budget,
        ),
        plots.latency_timeline(
            {
                label: (
                    steps.column("step")[first],
                    steps.column("latency_ms")[first],
                    steps.column("missed")[first],
                )
            },
            pdir / "latency_timeline.png",
            budget,
        ),
    ]


def format_profile(summary: dict[str, Any]) -> str:
    """A short text report of a profile summary."""
    lat = summary["latency"]
    ch = lat["chunk"]
    lines = [
        f"mode {lat['mode']} at {lat['hz']:g} Hz, budget {lat['budget_ms']:g} ms, {lat['n_steps']} steps "
        f"({lat['warmup_steps_excluded']} warm-up plans excluded: "
        f"{', '.join(f'{x:.1f}' for x in lat['warmup']['latency_ms'])} ms)",
        f"per step  p50 {_fmt(lat['p50_ms'], '.3f')}  p90 {_fmt(lat['p90_ms'], '.3f')}  "
        f"p99 {_fmt(lat['p99_ms'], '.1f')}  max {_fmt(lat['max_ms'], '.1f')} ms   miss rate "
        f"{100 * lat['miss_rate']:.1f}%",
        f"per chunk p50 {_fmt(ch['p50_ms'])}  p90 {_fmt(ch['p90_ms'])}  p99 {_fmt(ch['p99_ms'])}  "
        f"max {_fmt(ch['max_ms'])} ms   over budget {ch['over_budget']}/{ch['n']}",
        "sources   " + "  ".join(f"{k} {v}" for k, v in lat["action_sources"].items()),
        "sections  "
        + "  ".join(
            f"{k} {v['total_ms']:.0f} ms ({100 * v['share']:.0f}%)"
            for k, v in lat.get("sections", {}).items()
        ),
    ]
    agg = summary["aggregated"]
    lines.append(
        f"score {agg['mean_score']:.3f}, success {agg['pc_success']:.0f}% over {agg['n_episodes']} episodes"
    )
    return "\n".join(lines)
