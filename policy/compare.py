"""The comparison job (`parapolicy-compare`): samplers side by side on the same seeds and noise; no hydra.

`run_compare` runs every configured sampler (default: sequential DDPM-100, ParaDDPM, and the few-step
solvers DPM-Solver++(2M)-5/-10 and DDIM-8/-16 each sequential and as Picard) in every configured control
mode (default: ``frozen`` for sample quality over the 50 reference test seeds, batched, then
``realtime_sim`` at 10 Hz over the first ``realtime_episodes`` (2) of those seeds, one plan at a time)
on the same seeds and the same per-episode noise, prints a line per run, then times every sampler in
``frontier_rounds`` interleaved rounds on the same recorded observations (batch 1, the bench's
protocol) for the frontier's latencies, and writes into the run folder:

- ``compare.json``: the side-by-side table, every run's aggregated metrics and latency summary, the
  differences to the baseline, paired episode by episode (`paired_differences`: each sampler against
  the baseline, and each stitching rule of a sweep against its first), the score-latency frontier
  (`control.frontier`: frozen score against the interleaved batch-1 ms per chunk, which sampler wins at
  which latency budget), notes (e.g. when the samplers did not draw identical noise), provenance;
- ``<sampler>/eval_info.json``: lerobot-compatible per-episode records of the first mode, with every
  mode's block under ``by_mode``; ``<sampler>/latency/steps_<mode>.csv`` and ``chunks_<mode>.csv``;
- ``plots/*.png`` (latency CDF and histogram, per-step timeline, per-episode reward, baseline vs
  parallel, ``frontier.png``) and ``videos/<sampler>_<mode>_episode_<i>.mp4``.

The environment is a controller `Task` chosen by name (``task=pusht``, the default, or
``task=gym_pusht``). The profiling job is `profile.py`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from parapolicy.policy.bench import SamplerBenchConfig, interleaved_ms_per_chunk
from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.control import plots
from parapolicy.policy.control.evaluation import EvalConfig, paired_difference
from parapolicy.policy.control.frontier import (
    FrontierPoint,
    budget_winners,
    format_frontier,
    frontier_plot,
)
from parapolicy.policy.control.latency import write_csv
from parapolicy.policy.control.records import RolloutResult
from parapolicy.policy.control.rollout import check_policy_settings, run_rollouts
from parapolicy.policy.control.run_support import PolicyRunConfig, fmt, open_policy, progress_bar, run_block
from parapolicy.policy.control.settings import MODES, STITCH_RULES, ControlConfig, LatencyModel
from parapolicy.policy.control.tasks import task_for_policy
from parapolicy.policy.model.policy import DiffusionPolicy
from parapolicy.policy.run_dir import claim_run_dir, write_result
from parapolicy.policy.run_info import run_info
from parapolicy.policy.runtime.auto_window import resolve_sampler

SCORE_TOLERANCE = 0.03  # acceptance: frozen-mode mean scores of the samplers differ by at most this
ROUNDING_SLACK = 1e-6  # "not below": mean scores apart by float rounding only count as equal


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


PARADDPM = SamplerConfig(algorithm="picard", window=24, update="parareal", coarse="linear")
"""ParaDDPM as `parapolicy-compare` runs it: DDPM-100 by Picard iteration, tol 0.1, the window, update and
coarse model with the fewest milliseconds per chunk in `parapolicy-bench` on 2 CPU cores
(docs/benchmarks.md)."""
FEW_STEP_SOLVERS = {
    "dpmsolver5": ("dpmsolver++", 5),
    "dpmsolver10": ("dpmsolver++", 10),
    "ddim8": ("ddim", 8),
    "ddim16": ("ddim", 16),
}
"""The few-step solvers users deploy, by name: (kind, K). Each also runs as Picard over its whole chain
(``para<name>``: window K, parareal update with the held-x̂₀ coarse model, which needs fewer iterations
than the linear one on these wide steps, tol `FEW_STEP_TOL`)."""
FEW_STEP_TOL = 0.01
"""Picard tolerance of the few-step solvers: their steps are wide, so the DDPM-equivalent variance the
tolerance is scaled by is large: tol 0.1 accepts plans far from the solver's own sample, 0.01 keeps
them close (figures in docs/benchmarks.md, "Few-step solvers as Picard")."""


def default_samplers() -> dict[str, SamplerEntry]:
    """The named samplers `CompareConfig.run` picks from.

    ``sequential``: DDPM-100, the reference. ``paraddpm``: the same DDPM-100 solved by Picard iteration
    (`PARADDPM`), drawing exactly the sequential sampler's noise. ``paraddpm_warm``: the same with the
    first window rolled out from the previous chunk's sample (shifted along the horizon) instead of
    x̂₀ = 0. ``paraddpm_crn``: warm start with common random numbers (different noise). The few-step
    solvers of `FEW_STEP_SOLVERS` (``dpmsolver5``, ``dpmsolver10``, ``ddim8``, ``ddim16``) and their
    Picard versions (``paradpmsolver5``, ...; window K, parareal update, tol `FEW_STEP_TOL`).
    """
    out = {
        "sequential": SamplerEntry(SamplerConfig()),
        "paraddpm": SamplerEntry(PARADDPM),
        "paraddpm_warm": SamplerEntry(dataclasses.replace(PARADDPM, warm_start=True)),
        "paraddpm_crn": SamplerEntry(
            dataclasses.replace(PARADDPM, warm_start=True, common_random_numbers=True)
        ),
    }
    for name, (kind, K) in FEW_STEP_SOLVERS.items():
        seq = SamplerConfig(kind=kind, num_inference_steps=K)
        out[name] = SamplerEntry(seq)
        out[f"para{name}"] = SamplerEntry(
            dataclasses.replace(seq, algorithm="picard", window=K, tol=FEW_STEP_TOL, update="parareal")
        )
    return out


def default_run() -> list[str]:
    """The default comparison: DDPM-100, ParaDDPM, and each few-step solver then its Picard version."""
    return ["sequential", "paraddpm", *(n for name in FEW_STEP_SOLVERS for n in (name, f"para{name}"))]


def _compare_eval() -> EvalConfig:
    return EvalConfig(n_episodes=50, batch_size=50, max_videos=0)


@dataclass
class CompareConfig(PolicyRunConfig):
    """`parapolicy-compare` settings."""

    samplers: dict[str, SamplerEntry] = field(default_factory=default_samplers)
    """Named samplers (edit one with ``samplers.<name>.sampler.window=16``; add new names in a YAML)."""
    run: list[str] = field(default_factory=default_run)
    """The samplers to compare, in order (names from ``samplers``; default: `default_run`)."""
    baseline: str = "sequential"
    """The sampler the others are compared with (speedup, score difference)."""
    modes: list[str] = field(default_factory=lambda: ["frozen", "realtime_sim"])
    """Control modes to run, in order (``frozen``, ``realtime_sim``, ``wallclock``)."""
    eval: EvalConfig = field(default_factory=_compare_eval)
    """Episodes, seeds, batching (frozen), videos (per sampler and mode; default none: add them with
    ``eval.max_videos=2``), noise seed."""
    realtime_episodes: int = 2
    """Episodes (the first seeds) of the time-aware modes, run one plan at a time; 0: all. The default
    keeps the whole default run well under 5 minutes on 2 CPU cores (docs/benchmarks.md)."""
    frontier_score_tol: float = 0.01
    """Score-latency frontier: a slower sampler wins a latency budget only if its mean score is more than
    this above every faster frontier sampler's (`control.frontier`)."""
    frontier_rounds: int = 3
    """Rounds of the frontier's latency pass, after the rollouts: every sampler in turn samples the same
    recorded observations, round after round (`bench.interleaved_ms_per_chunk`, batch 1), and the
    frontier takes each one's median ms per chunk. Interleaved, so that a shared machine's drift hits
    every sampler alike (the closed-loop runs of two samplers happen minutes apart). 0: no frontier."""
    control: ControlConfig = field(default_factory=ControlConfig)
    """Controller settings (its ``mode`` is set per run from ``modes``)."""
    plots: bool = True
    """Write PNG plots under ``plots/``."""
    num_threads: int | None = None
    """torch intra-op threads (None: torch's default)."""
    latency_sweep: list[str] = field(default_factory=list)
    """``realtime_sim`` latency models to run each sampler under, one run each (e.g.
    ``[fixed:150,fixed:250,fixed:350,fixed:550]``); they replace the samplers' own models. Empty: one
    run with the sampler's model."""
    stitch_sweep: list[str] = field(default_factory=list)
    """Stitching rules (``drop``, ``inpaint``) to run every time-aware mode with, one run each; empty:
    ``control.stitch`` only."""
    realtime_batch: int = 1
    """Episodes stepped in lockstep (planned in one batched call) in ``realtime_sim`` runs whose latency
    model is ``fixed``: the simulated timeline does not depend on compute time, so the results are
    those of one episode at a time up to float rounding, for a fraction of the CPU time; the measured
    compute times (and the speedup column) are then those of batched calls. Other runs use 1."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for text in self.latency_sweep:
            LatencyModel.parse(text)
        if len(set(self.latency_sweep)) != len(self.latency_sweep):
            raise ValueError(f"latency_sweep must not repeat a model, got {list(self.latency_sweep)}")
        bad_stitch = [r for r in self.stitch_sweep if r not in STITCH_RULES]
        if bad_stitch or len(set(self.stitch_sweep)) != len(self.stitch_sweep):
            raise ValueError(
                f"stitch_sweep must be distinct values from {STITCH_RULES}, got {list(self.stitch_sweep)}"
            )
        if self.realtime_batch < 1:
            raise ValueError(f"realtime_batch must be >= 1, got {self.realtime_batch}")
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
        if self.latency_sweep and "realtime_sim" not in self.modes:
            raise ValueError(
                f"latency_sweep sweeps realtime_sim's latency: add realtime_sim to modes={list(self.modes)}"
            )
        if self.stitch_sweep and not {"realtime_sim", "wallclock"} & set(self.modes):
            raise ValueError(
                "stitch_sweep sweeps a time-aware mode's stitching: add realtime_sim or wallclock to "
                f"modes={list(self.modes)}"
            )
        if not 0 <= self.realtime_episodes <= self.eval.n_episodes:
            raise ValueError(
                f"realtime_episodes must be in [0, eval.n_episodes={self.eval.n_episodes}], "
                f"got {self.realtime_episodes}"
            )
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or null, got {self.num_threads}")
        if self.frontier_score_tol < 0:
            raise ValueError(f"frontier_score_tol must be >= 0, got {self.frontier_score_tol}")
        if self.frontier_rounds < 0:
            raise ValueError(f"frontier_rounds must be >= 0, got {self.frontier_rounds}")
        for name in self.samplers:
            if not name or any(c in name for c in "/\\ ") or name.startswith("."):
                raise ValueError(f"sampler name {name!r} must be a plain folder name")


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
        "latency_model": lat.get("latency_model"),
        "stitch": lat.get("stitch") if lat.get("mode") != "frozen" else None,
        "forecast": lat.get("forecast") if lat.get("mode") != "frozen" else None,
        "delay_ms": _modelled_delay_ms(lat),
        "expected_delay_ticks": ch["delay"]["mean_expected"],
        "plans_per_episode": agg["mean_plans"],
        **{f"action_{k}": v for k, v in agg["smoothness"].items()},
        "eval_s": agg["eval_s"],
        "cpu_s": agg["cpu_s"],
    }


def _modelled_delay_ms(lat: dict[str, Any]) -> float | None:
    """The plan latency of a fixed latency model in realtime_sim (the x axis of the delay sweep)."""
    if lat.get("mode") != "realtime_sim":
        return None
    model = LatencyModel.parse(lat.get("latency_model", "measured"))
    return model.ms if model.kind == "fixed" else None


def format_table(rows: list[dict[str, Any]]) -> str:
    """The side-by-side table printed by `parapolicy-compare` (plain text, one line per run).

    ``Δ mean/bnd/max`` is the executed action's per-tick change (mean over all ticks, mean at chunk
    boundaries, max; environment units) and ``bnd/in`` the boundary mean over the in-chunk mean.
    """
    w = max([12, *(len(r["mode"]) for r in rows)])
    head = (
        f"{'sampler':<12} {'mode':<{w}} {'B':>3} {'eps':>4} {'score':>6} {'success % [95% CI]':>20} "
        f"{'step p50/p90/p99/max ms':>28} {'chunk p50/p99 ms':>17} {'calls':>6} {'iters':>6} "
        f"{'lost/ep':>7} {'miss%':>6} {'plans':>5} {'Δ mean/bnd/max':>16} {'bnd/in':>6} {'speedup':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lo, hi = r["pc_success_ci95"]
        step = "/".join(
            fmt(r[k], ".2f" if (r[k] or 0) < 10 else ".0f")
            for k in ("step_p50_ms", "step_p90_ms", "step_p99_ms", "step_max_ms")
        )
        chunk = f"{fmt(r['chunk_p50_ms'], '.0f')}/{fmt(r['chunk_p99_ms'], '.0f')}"
        success = f"{r['pc_success']:.0f} [{lo:.0f}, {hi:.0f}]"
        change = "/".join(
            fmt(r.get(f"action_{k}"), ".1f") for k in ("mean_change", "boundary_mean_change", "max_change")
        )
        lines.append(
            f"{r['sampler']:<12} {r['mode']:<{w}} {r['batch_size']:>3} {r['n_episodes']:>4} "
            f"{r['mean_score']:>6.3f} {success:>20} {step:>28} "
            f"{chunk:>17} {fmt(r['model_calls_per_chunk']):>6} {fmt(r['iters_per_chunk']):>6} "
            f"{fmt(r['ticks_lost_per_episode']):>7} {100 * r['miss_rate']:>6.1f} "
            f"{fmt(r.get('plans_per_episode')):>5} {change:>16} "
            f"{fmt(r.get('action_boundary_ratio'), '.2f'):>6} {fmt(r.get('speedup'), '.2f'):>7}"
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


def run_cells(cfg: CompareConfig) -> list[tuple[str, str, str | None, str | None]]:
    """The runs of every sampler: ``(label, mode, latency model or None, stitch rule or None)``.

    Without sweeps the label is the mode. A time-aware mode runs once per stitching rule of
    ``stitch_sweep``, and ``realtime_sim`` once per latency model of ``latency_sweep``; their labels
    name what was swept (``realtime_sim@fixed:350/inpaint``).
    """
    cells = []
    for mode in cfg.modes:
        if mode == "frozen":
            cells.append((mode, mode, None, None))
            continue
        sweep = mode == "realtime_sim" and cfg.latency_sweep
        lats: list[str | None] = list(cfg.latency_sweep) if sweep else [None]
        stitches: list[str | None] = list(cfg.stitch_sweep) or [None]
        for lat in lats:
            for st in stitches:
                label = mode + (f"@{lat}" if lat else "") + (f"/{st}" if st else "")
                cells.append((label, mode, lat, st))
    return cells


def run_labels(cfg: CompareConfig) -> list[str]:
    """The labels of `run_cells`, in order (the keys of each sampler's results)."""
    return [c[0] for c in run_cells(cfg)]


def file_label(label: str) -> str:
    """A run label as a file-name part: ``realtime_sim@fixed:350/inpaint`` gives
    ``realtime_sim_fixed-350_inpaint``."""
    return label.replace("@", "_").replace(":", "-").replace("/", "_")


# --------------------------------------------------------------------------------------------------
# compare
Results = dict[str, dict[str, RolloutResult]]  # sampler name -> run label -> result


def run_compare(cfg: CompareConfig, out: Path) -> dict[str, Any]:
    """Run the comparison and write its outputs into ``out``; returns the ``compare.json`` content.

    Raises:
        CheckpointError: the checkpoint is missing or invalid (before anything runs).
        ValueError: settings the checkpoint cannot run (before anything runs).
        FileExistsError: ``out`` already holds a comparison.
    """
    out = Path(out)
    claim_run_dir(out, ["compare.json", *cfg.run], "parapolicy-compare")
    load_start = os.getloadavg()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    policy = open_policy(cfg.policy_path, cfg.device, cfg.compile)
    check_policy_settings(policy, cfg.control, [cfg.samplers[n].sampler for n in cfg.run])
    samplers, window_choice = {}, {}
    for n in cfg.run:  # window="auto": measured on this device once (cached), before any rollout
        samplers[n], report = resolve_sampler(policy, cfg.samplers[n].sampler)
        if report is not None:
            window_choice[n] = {"window": samplers[n].window, **report}
    versions = run_info(cfg.device)  # once: it asks git for the commit
    results = _run_all(cfg, policy, samplers, out, versions)
    latency_rounds = _frontier_latencies(cfg, policy, samplers) if cfg.frontier_rounds else None
    rows = _table_rows(cfg, results)
    machine = {"load_avg_1m_start": load_start[0], "load_avg_1m_end": os.getloadavg()[0]}
    summary = {
        "table": rows,
        "baseline": cfg.baseline,
        "notes": _notes(cfg),
        "checks": _checks(cfg, rows),
        "paired": paired_differences(cfg, results),
        "frontier": frontier_summary(cfg, results, latency_rounds),
        "window_choice": window_choice,
        "runs": {n: {m: run_block(r) for m, r in per.items()} for n, per in results.items()},
        "config": dataclasses.asdict(cfg),
        "run": {**versions, **machine, "policy_path": cfg.policy_path, "task": cfg.task},
    }
    for per in summary["runs"].values():
        for block in per.values():
            block.pop("per_episode")  # per-episode records live in <sampler>/eval_info.json
    write_result(out / "compare.json", summary)  # the results, before any plot
    if cfg.plots:
        paths = compare_plots(cfg, results, out / "plots")
        if cfg.latency_sweep:
            paths.append(plots.delay_sweep(rows, out / "plots" / "delay_sweep.png"))
        summary["plots"] = [str(p) for p in paths]
        if summary["frontier"] is not None:
            summary["plots"].append(
                str(
                    frontier_plot(
                        _points(summary["frontier"]),
                        out / "plots" / "frontier.png",
                        cfg.frontier_score_tol,
                        "mean score (frozen) vs chunk latency (batch 1)",
                    )
                )
            )
        write_result(out / "compare.json", summary)  # with the plots' paths
    return summary


def _runs(cfg: CompareConfig) -> list[tuple[str, str, EvalConfig, ControlConfig]]:
    """(run label, sampler name, episodes, controller settings) of every run, in order."""
    runs = []
    for label, mode, latency, stitch in run_cells(cfg):
        if mode == "frozen":
            ec = cfg.eval
        else:
            n = cfg.realtime_episodes or cfg.eval.n_episodes
            ec = dataclasses.replace(cfg.eval, n_episodes=n, batch_size=1)
        for name in cfg.run:
            entry = cfg.samplers[name]
            model = cfg.control.latency_model if entry.latency_model is None else entry.latency_model
            model = latency or model
            lockstep = mode == "realtime_sim" and LatencyModel.parse(model).kind == "fixed"
            control = dataclasses.replace(
                cfg.control,
                mode=mode,
                latency_model=model if mode == "realtime_sim" else "measured",
                stitch=stitch or cfg.control.stitch,
            )
            runs.append(
                (
                    label,
                    name,
                    dataclasses.replace(ec, batch_size=cfg.realtime_batch) if lockstep else ec,
                    control,
                )
            )
    return runs


def _run_all(
    cfg: CompareConfig,
    policy: DiffusionPolicy,
    samplers: dict[str, SamplerConfig],
    out: Path,
    versions: dict[str, Any],
) -> Results:
    """Run every sampler in every mode, writing each run's records into ``out`` as it finishes
    (`_write_run_outputs`, with the ``versions`` of `run_info`), so that an interrupted comparison
    keeps them; says so on Ctrl-C."""
    results: Results = {n: {} for n in cfg.run}
    try:
        _run_each(
            cfg,
            policy,
            samplers,
            out / "videos" if cfg.eval.max_videos else None,
            results,
            lambda name, label: _write_run_outputs(cfg, results, out, name, label, versions),
        )
    except KeyboardInterrupt:
        done = sum(len(per) for per in results.values())
        where = (
            f"the finished runs' records are in {out}/<sampler>/eval_info.json and latency/"
            if done
            else "no run finished, nothing was written"
        )
        print(
            f"compare: interrupted after {done} of {len(_runs(cfg))} runs; {where} (compare.json is "
            "written by a finished comparison)",
            file=sys.stderr,
            flush=True,
        )
        raise
    return results


def _run_each(
    cfg: CompareConfig,
    policy: DiffusionPolicy,
    samplers: dict[str, SamplerConfig],
    video_dir: Path | None,
    results: Results,
    on_run: Callable[[str, str], None],
) -> None:
    """Run every sampler in every mode on the task, with one progress bar over all control steps; each
    result goes into ``results`` and ``on_run(sampler, label)`` is called as soon as it is there."""
    runs = _runs(cfg)
    task = task_for_policy(cfg.task, policy.config)  # the policy's observations (state or images)
    bar = progress_bar(
        sum(ec.n_episodes * ec.max_steps for _, _, ec, _ in runs), cfg.eval.progress, "compare"
    )
    try:
        for i, (label, name, ec, control) in enumerate(runs):
            bar.set_description(f"compare {name}/{label}")
            policy.set_sampler(samplers[name])
            started = time.perf_counter()
            results[name][label] = run_rollouts(
                policy,
                dataclasses.replace(ec, progress=False),
                control,
                video_dir=video_dir,
                video_prefix=f"{name}_{file_label(label)}_episode_",
                on_steps=bar.update,
                task=task,
            )
            on_run(name, label)
            if cfg.eval.progress:  # one line per run, also where stderr is not a terminal
                agg, chunk = results[name][label].aggregated, results[name][label].latency["chunk"]
                print(
                    f"compare [{i + 1}/{len(runs)}] {label} {name}: score {agg['mean_score']:.3f} over "
                    f"{agg['n_episodes']} episodes, chunk p50 {fmt(chunk['p50_ms'])} ms, "
                    f"{time.perf_counter() - started:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        bar.close()


def _table_rows(cfg: CompareConfig, results: Results) -> list[dict[str, Any]]:
    """One table row per (run, sampler), with the speedup and score difference to the baseline."""
    rows = []
    for mode in run_labels(cfg):
        base = results[cfg.baseline][mode]
        base_ms = base.latency["chunk"]["compute"]["p50_ms"]
        for name in cfg.run:
            r = results[name][mode]
            row = _table_row(name, mode, r)
            ms = r.latency["chunk"]["compute"]["p50_ms"]
            row["speedup"] = base_ms / ms if base_ms and ms else None
            row["score_diff_vs_baseline"] = r.aggregated["mean_score"] - base.aggregated["mean_score"]
            rows.append(row)
    return rows


def _write_run_outputs(
    cfg: CompareConfig, results: Results, out: Path, name: str, label: str, versions: dict[str, Any]
) -> None:
    """The outputs of one finished run, written as it finishes (an interrupted comparison keeps them):
    its latency CSVs, and ``<sampler>/eval_info.json`` rewritten with every run of the sampler so far
    (the first run's block at the top, the others under ``by_mode``; ``versions``: `run_info`'s)."""
    sdir, r = out / name, results[name][label]
    extra = {"sampler": name, "mode": label}
    write_csv(r.steps, sdir / "latency" / f"steps_{file_label(label)}.csv", extra)
    write_csv(r.chunks, sdir / "latency" / f"chunks_{file_label(label)}.csv", extra)
    by_mode = {m: run_block(results[name][m]) for m in run_labels(cfg) if m in results[name]}
    first = next(iter(by_mode))
    info = {
        **by_mode[first],
        "by_mode": {m: b for m, b in by_mode.items() if m != first},
        "run": {
            **versions,
            "policy_path": cfg.policy_path,
            "sampler_name": name,
            "task": cfg.task,
        },
    }
    write_result(sdir / "eval_info.json", info)


def _notes(cfg: CompareConfig) -> list[str]:
    notes = _noise_notes(cfg)
    if "frozen" in cfg.modes and cfg.eval.batch_size > 1:
        notes.append(
            f"frozen latencies are those of batched calls (up to {cfg.eval.batch_size} episodes per plan); "
            "per-plan latencies come from the time-aware modes (one plan at a time)"
        )
    return notes


def _checks(cfg: CompareConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Acceptance checks: frozen scores within `SCORE_TOLERANCE`, time-aware scores not below baseline."""
    checks: dict[str, Any] = {}
    if "frozen" in cfg.modes:
        diffs = {r["sampler"]: r["score_diff_vs_baseline"] for r in rows if r["mode"] == "frozen"}
        checks["frozen_score_within_tolerance"] = {
            "tolerance": SCORE_TOLERANCE,
            "diff_vs_baseline": diffs,
            "ok": all(abs(d) <= SCORE_TOLERANCE for d in diffs.values()),
        }
    for mode in (m for m in run_labels(cfg) if m != "frozen"):
        diffs = {r["sampler"]: r["score_diff_vs_baseline"] for r in rows if r["mode"] == mode}
        checks[f"{mode}_score_not_below_baseline"] = {
            "diff_vs_baseline": diffs,
            "slack": ROUNDING_SLACK,
            "ok": all(d >= -ROUNDING_SLACK for d in diffs.values()),
            "n_episodes": cfg.realtime_episodes or cfg.eval.n_episodes,
        }
    return checks


def paired_differences(cfg: CompareConfig, results: Results) -> list[dict[str, Any]]:
    """Runs compared episode by episode (the same seeds, and the same noise where the samplers draw
    alike): in every run label each sampler against the baseline, and under ``stitch_sweep`` each
    stitching rule against the sweep's first rule at the same mode and latency model. Each entry is
    `evaluation.paired_difference` of run (``sampler``, ``label``) against run (``against_sampler``,
    ``against_label``)."""
    pairs = []
    for label in run_labels(cfg):
        base = results[cfg.baseline][label].per_episode
        for name in cfg.run:
            if name != cfg.baseline:
                diff = paired_difference(results[name][label].per_episode, base)
                pairs.append(_pair(name, label, cfg.baseline, label, diff))
    first = cfg.stitch_sweep[0] if cfg.stitch_sweep else None
    for label, _, _, stitch in run_cells(cfg):
        if stitch is None or stitch == first:
            continue
        ref = label.removesuffix(f"/{stitch}") + f"/{first}"
        for name in cfg.run:
            diff = paired_difference(results[name][label].per_episode, results[name][ref].per_episode)
            pairs.append(_pair(name, label, name, ref, diff))
    return pairs


def _pair(
    sampler: str, label: str, against_sampler: str, against_label: str, diff: dict[str, Any]
) -> dict[str, Any]:
    return {
        "sampler": sampler,
        "label": label,
        "against_sampler": against_sampler,
        "against_label": against_label,
        **diff,
    }


def format_paired(pairs: list[dict[str, Any]]) -> list[str]:
    """The report lines of `paired_differences` (none when there is nothing to pair)."""
    if not pairs:
        return []
    lines = [
        "paired by episode (mean score difference [95%]; successes only in the first / only in the second):"
    ]
    for p in pairs:
        ci = p["mean_score_diff_ci95"]
        interval = "" if ci is None else f" [{ci[0]:+.4f}, {ci[1]:+.4f}]"
        lines.append(
            f"  {p['sampler']} {p['label']} - {p['against_sampler']} {p['against_label']}: "
            f"{p['mean_score_diff']:+.4f}{interval}; "
            f"{p['successes_only_here']} / {p['successes_only_there']} of {p['n_episodes']}"
        )
    return lines


def _frontier_latencies(
    cfg: CompareConfig, policy: DiffusionPolicy, samplers: dict[str, SamplerConfig]
) -> dict[str, list[float]]:
    """Each sampler's batch-1 ms per chunk in each of ``frontier_rounds`` interleaved rounds."""
    if cfg.eval.progress:
        print(
            f"compare: frontier latencies, {cfg.frontier_rounds} interleaved rounds of "
            f"{len(cfg.run)} samplers",
            file=sys.stderr,
            flush=True,
        )
    bench = SamplerBenchConfig(repeats=cfg.frontier_rounds, few_step=(), progress=cfg.eval.progress)
    rounds = interleaved_ms_per_chunk(policy, [samplers[n] for n in cfg.run], bench)
    return dict(zip(cfg.run, rounds, strict=True))


def frontier_summary(
    cfg: CompareConfig, results: Results, latency_rounds: dict[str, list[float]] | None
) -> dict[str, Any] | None:
    """Each sampler's mean score (frozen mode if run, else the first mode) against its batch-1 ms per
    chunk (the median of its interleaved ``latency_rounds``), the frontier and the winner per latency
    budget; None without latency rounds (``frontier_rounds=0``)."""
    if not latency_rounds:
        return None
    labels = run_labels(cfg)  # modes, or `<mode>@<latency>/<stitch>` under sweeps
    score_mode = "frozen" if "frozen" in labels else labels[0]
    points = [
        FrontierPoint(
            n, results[n][score_mode].aggregated["mean_score"], statistics.median(latency_rounds[n])
        )
        for n in cfg.run
    ]
    winners = budget_winners(points, cfg.frontier_score_tol)
    return {
        "score_mode": score_mode,
        "latency": "batch-1 ms per chunk, median of interleaved rounds (bench.interleaved_ms_per_chunk)",
        "latency_rounds_ms": latency_rounds,
        "score_tol": cfg.frontier_score_tol,
        "points": [dataclasses.asdict(p) for p in points],
        "frontier": [p.name for _, _, p in winners],
        "winners": [
            {"from_ms": lo, "to_ms": None if math.isinf(hi) else hi, "sampler": p.name}
            for lo, hi, p in winners
        ],
        "text": format_frontier(points, cfg.frontier_score_tol),
    }


def _points(frontier: dict[str, Any]) -> list[FrontierPoint]:
    return [FrontierPoint(**p) for p in frontier["points"]]


def format_report(summary: dict[str, Any], out: Path) -> str:
    """What `parapolicy-compare` prints: the table, the notes, the checks and the machine load."""
    lines = [format_table(summary["table"])]
    lines += [f"note: {note}" for note in summary["notes"]]
    baseline = summary["baseline"]
    for name, check in summary["checks"].items():
        diffs = ", ".join(f"{k} {v:+.3f}" for k, v in check["diff_vs_baseline"].items() if k != baseline)
        mode = name.split("_score")[0]
        rule = f"within +-{check['tolerance']}" if "tolerance" in check else "not below"
        lines.append(f"{mode} mean score vs {baseline}: {diffs} ({'ok' if check['ok'] else 'NOT'} {rule})")
    lines += format_paired(summary.get("paired", []))
    if summary.get("frontier") is not None:
        fr = summary["frontier"]
        n_rounds = len(next(iter(fr["latency_rounds_ms"].values())))
        lines.append(
            f"scores: {fr['score_mode']} mode; latencies: batch-1 ms per chunk, median of {n_rounds} "
            "interleaved rounds over the same recorded observations"
        )
        lines.append(fr["text"])
    run = summary["run"]
    lines.append(
        f"load average {run['load_avg_1m_start']:.1f} -> {run['load_avg_1m_end']:.1f} "
        f"-> {out / 'compare.json'}"
    )
    return "\n".join(lines)


def compare_plots(cfg: CompareConfig, results: dict[str, dict[str, RolloutResult]], pdir: Path) -> list[Path]:
    """The comparison's PNGs; latency plots use the last time-aware mode (else the first mode)."""
    labels = run_labels(cfg)
    timed = [m for m in labels if m != "frozen"]
    lmode = timed[-1] if timed else labels[0]
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
        f"{n}/{m}": [e["max_reward"] for e in results[n][m].per_episode] for m in labels for n in cfg.run
    }
    paths.append(plots.episode_rewards(rewards, pdir / "episode_reward.png"))
    for m in labels:
        base = [e["max_reward"] for e in results[cfg.baseline][m].per_episode]
        others = {
            n: [e["max_reward"] for e in results[n][m].per_episode] for n in cfg.run if n != cfg.baseline
        }
        if others:
            paths.append(
                plots.sequential_vs_parallel(
                    base,
                    others,
                    pdir / f"seq_vs_parallel_{file_label(m)}.png",
                    cfg.baseline,
                    f"per-episode reward, {m}",
                )
            )
    return paths
