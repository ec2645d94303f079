"""The profiling job (`parapolicy-profile`): per-control-step latency of one sampler in one mode; no hydra.

`run_profile` runs one sampler in one control mode on one task and writes ``latency/steps.csv`` (one
row per control step), ``latency/chunks.csv`` (one per plan), ``latency/summary.json`` (percentiles,
miss rate, time per section), ``eval_info.json`` and plots into the run folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from parapolicy.policy.compare import PARADDPM
from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.control import plots
from parapolicy.policy.control.evaluation import EvalConfig
from parapolicy.policy.control.latency import write_csv
from parapolicy.policy.control.records import RolloutResult
from parapolicy.policy.control.rollout import check_policy_settings, run_rollouts
from parapolicy.policy.control.run_support import PolicyRunConfig, fmt, open_policy, progress_bar, run_block
from parapolicy.policy.control.settings import ControlConfig
from parapolicy.policy.control.tasks import task_for_policy
from parapolicy.policy.run_dir import claim_run_dir, write_result
from parapolicy.policy.run_info import run_info
from parapolicy.policy.runtime.auto_window import resolve_sampler


@dataclass
class ProfileConfig(PolicyRunConfig):
    """`parapolicy-profile` settings."""

    sampler: SamplerConfig = field(default_factory=lambda: dataclasses.replace(PARADDPM))
    """The sampler to profile (default: `compare.PARADDPM`, as `parapolicy-compare`'s ``paraddpm``)."""
    control: ControlConfig = field(default_factory=lambda: ControlConfig(mode="realtime_sim"))
    """Controller settings (default: realtime_sim at 10 Hz, measured latency)."""
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(n_episodes=3, batch_size=1, max_videos=0))
    """Episodes and seeds (frozen mode batches ``batch_size`` episodes; the default 1 times single plans)."""
    plots: bool = True
    """Write PNG plots under ``plots/``."""
    num_threads: int | None = None
    """torch intra-op threads (None: torch's default)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or null, got {self.num_threads}")


def run_profile(cfg: ProfileConfig, out: Path) -> dict[str, Any]:
    """Profile one sampler per control step; writes CSVs, ``latency/summary.json``, plots.

    Returns:
        The summary (``latency`` block with percentiles, miss rate and ``sections``; aggregated metrics).
    """
    out = Path(out)
    claim_run_dir(out, ["latency", "eval_info.json"], "parapolicy-profile")
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    policy = open_policy(cfg.policy_path, cfg.device, cfg.compile)
    check_policy_settings(policy, cfg.control, [cfg.sampler])
    sampler, report = resolve_sampler(policy, cfg.sampler)  # window="auto": measured here
    window_choice = None if report is None else {"window": sampler.window, **report}
    policy.set_sampler(sampler)
    ec = cfg.eval
    bar = progress_bar(ec.n_episodes * ec.max_steps, ec.progress, f"profile {cfg.control.mode}")
    try:
        result = run_rollouts(
            policy,
            dataclasses.replace(ec, progress=False),
            cfg.control,
            video_dir=out / "videos" if ec.max_videos else None,
            on_steps=bar.update,
            task=task_for_policy(cfg.task, policy.config),
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
        "run": {**run_info(cfg.device), "policy_path": cfg.policy_path, "task": cfg.task},
    }
    write_result(ldir / "summary.json", summary)
    info = {**run_block(result), "run": summary["run"]}
    write_result(out / "eval_info.json", info)
    if cfg.plots:
        summary["plots"] = [str(p) for p in profile_plots(result, cfg.sampler.algorithm, out / "plots")]
    return summary


def profile_plots(result: RolloutResult, label: str, pdir: Path) -> list[Path]:
    """Histogram, CDF and per-step timeline of one profiled run."""
    budget = result.latency["budget_ms"]
    steps, chunks = result.steps, result.chunks
    ok = chunks.column("fault") == 0
    first = steps.column("episode") == steps.column("episode")[:1].max(initial=0)
    timeline = (steps.column("step")[first], steps.column("latency_ms")[first], steps.column("missed")[first])
    return [
        plots.latency_hist({label: chunks.column("latency_ms")[ok]}, pdir / "latency_hist.png", budget),
        plots.latency_cdf(
            {label: steps.column("latency_ms")},
            {label: chunks.column("latency_ms")[ok]},
            pdir / "latency_cdf.png",
            budget,
        ),
        plots.latency_timeline({label: timeline}, pdir / "latency_timeline.png", budget),
    ]


def format_profile(summary: dict[str, Any]) -> str:
    """A short text report of a profile summary."""
    lat = summary["latency"]
    ch = lat["chunk"]
    lines = [
        f"mode {lat['mode']} at {lat['hz']:g} Hz, budget {lat['budget_ms']:g} ms, {lat['n_steps']} steps "
        f"({lat['warmup_steps_excluded']} warm-up plans excluded: "
        f"{', '.join(f'{x:.1f}' for x in lat['warmup']['latency_ms'])} ms)",
        f"per step  p50 {fmt(lat['p50_ms'], '.3f')}  p90 {fmt(lat['p90_ms'], '.3f')}  "
        f"p99 {fmt(lat['p99_ms'], '.1f')}  max {fmt(lat['max_ms'], '.1f')} ms   miss rate "
        f"{100 * lat['miss_rate']:.1f}%",
        f"per chunk p50 {fmt(ch['p50_ms'])}  p90 {fmt(ch['p90_ms'])}  p99 {fmt(ch['p99_ms'])}  "
        f"max {fmt(ch['max_ms'])} ms   over budget {ch['over_budget']}/{ch['n']}",
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
