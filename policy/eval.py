"""The evaluation job (`parapolicy-eval`): the reference protocol on a checkpoint; no hydra.

`run_eval` loads the checkpoint with the chosen sampler, runs `control.rollout.evaluate_policy` (frozen
rollouts from the reference initial states of seeds ``eval.start_seed ..``) on the chosen task and
writes ``eval_info.json`` (+ videos) into the run folder.

Under torchrun (`evaluate_across_ranks`) the seeds are split over the ranks in contiguous blocks of
whole lockstep batches: the episodes form batches of ``eval.batch_size`` as in one process, and rank r
takes the r-th contiguous block of batches (the first ``n_batches mod W`` ranks one batch more). So every
planning call sees the same episodes as in one process, and the results are identical bit for bit (the
U-Net's float rounding depends on the batch it runs in). Choose ``eval.batch_size <= n_episodes / W`` to
keep every rank busy. Rank 0 gathers the per-episode records and writes the one ``eval_info.json``: the
same records in seed order and the same aggregates as one process, except the measured times
(``aggregated.eval_s``, ``eval_ep_s``: rank 0's wall time of the whole run; ``cpu_s``: summed over the
ranks) and ``run.world_size``. Videos of the first ``eval.max_videos`` episodes are written by the
ranks that run them, under the one-process names.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.control.controller import aggregate_episodes
from parapolicy.policy.control.evaluation import EvalConfig
from parapolicy.policy.control.rollout import evaluate_policy, reference_control, run_rollouts
from parapolicy.policy.control.run_support import PolicyRunConfig, open_policy
from parapolicy.policy.control.smoothness import smoothness
from parapolicy.policy.control.task import Task
from parapolicy.policy.control.tasks import task_for_policy
from parapolicy.policy.model.policy import DiffusionPolicy
from parapolicy.policy.run_dir import write_result
from parapolicy.policy.run_health import DEFAULT_MAX_REJECTED_SHARE
from parapolicy.policy.run_info import run_info
from parapolicy.policy.runtime.auto_window import resolve_sampler
from parapolicy.policy.runtime.distributed import DistInfo
from parapolicy.policy.runtime.ranks import broadcast_int, contiguous_block, current_ranks, gather_json

logger = logging.getLogger(__name__)


@dataclass
class EvalJobConfig(PolicyRunConfig):
    """`parapolicy-eval` settings."""

    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """Sampler used for evaluation (default: the reference's sequential DDPM-100)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Episodes, seeds, batching, videos."""
    max_rejected_share: float = DEFAULT_MAX_REJECTED_SHARE
    """Exit non-zero (code 8, records still written) when the output guard rejects more plans than this."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.max_rejected_share <= 1.0:
            raise ValueError(f"max_rejected_share must be in [0, 1], got {self.max_rejected_share}")


def run_eval(cfg: EvalJobConfig, out: Path) -> dict[str, Any] | None:
    """Evaluate and write ``eval_info.json`` (+ videos under ``videos/``) into ``out``; returns its body.

    Under torchrun every rank calls this; the seeds are split over the ranks (`evaluate_across_ranks`),
    rank 0 writes the file and returns its body, the other ranks return None.
    """
    out = Path(out)
    ranks = current_ranks()
    device = cfg.device
    if ranks.world_size > 1 and device == "cuda":
        device = f"cuda:{ranks.local_rank}"  # one GPU per rank
    policy = open_policy(cfg.policy_path, device, cfg.compile)
    sampler, auto_window = _resolve_sampler_on_rank0(policy, cfg.sampler, ranks)
    policy.set_sampler(sampler)
    video_dir = out / "videos" if cfg.eval.max_videos else None
    task = task_for_policy(cfg.task, policy.config)
    result = evaluate_across_ranks(policy, cfg.eval, ranks, video_dir=video_dir, task=task)
    if result is None:
        return None
    result["run"] = {
        **run_info(device),
        "policy_path": cfg.policy_path,
        "sampler": dataclasses.asdict(sampler),
        "auto_window": auto_window,
        "eval": dataclasses.asdict(cfg.eval),
        "task": cfg.task,
        "world_size": ranks.world_size,
    }
    write_result(out / "eval_info.json", result)
    return result


def _resolve_sampler_on_rank0(
    policy: DiffusionPolicy, sampler: SamplerConfig, ranks: DistInfo
) -> tuple[SamplerConfig, dict[str, Any] | None]:
    """`resolve_sampler`; with ``window="auto"`` under torchrun, rank 0 measures and every rank uses its
    window (ranks that chose differently would not sample alike)."""
    if ranks.world_size == 1 or sampler.window != "auto":
        return resolve_sampler(policy, sampler)
    chosen, report = resolve_sampler(policy, sampler) if ranks.is_main else (None, None)
    window = broadcast_int(chosen.window if chosen is not None else 0, ranks)
    return dataclasses.replace(sampler, window=window), report


def evaluate_across_ranks(
    policy: DiffusionPolicy,
    cfg: EvalConfig,
    ranks: DistInfo,
    video_dir: Path | None = None,
    task: Task | None = None,
) -> dict[str, Any] | None:
    """`evaluate_policy` with the seeds split over the ranks in contiguous blocks (module docstring).

    Every rank calls it with the same arguments. Returns ``eval_info.json``'s body on rank 0 and None on
    the other ranks; with one process it is `evaluate_policy` itself.
    """
    if ranks.world_size == 1:
        return evaluate_policy(policy, cfg, video_dir=video_dir, task=task)
    start = time.perf_counter()
    n_batches = -(-cfg.n_episodes // cfg.batch_size)
    if n_batches < ranks.world_size and ranks.is_main:
        logger.warning(
            "eval.batch_size=%d makes %d lockstep batch(es) for %d processes, so some stay idle; choose "
            "eval.batch_size <= %d",
            cfg.batch_size,
            n_batches,
            ranks.world_size,
            max(1, cfg.n_episodes // ranks.world_size),
        )
    first, n_mine = contiguous_block(n_batches, ranks)
    offset = first * cfg.batch_size
    count = min(cfg.n_episodes, (first + n_mine) * cfg.batch_size) - offset
    mine: dict[str, Any] = {"per_episode": [], "cpu_s": 0.0, "change": [], "source": [], "episode": []}
    if count:
        block = dataclasses.replace(
            cfg,
            start_seed=cfg.start_seed + offset,
            n_episodes=count,
            max_videos=max(0, min(count, cfg.max_videos - offset)),
        )
        mine = _run_block(policy, block, offset, video_dir, task, ranks)
    parts = gather_json(mine, ranks)
    if parts is None:
        return None
    records = [rec for part in parts for rec in part["per_episode"]]
    agg = aggregate_episodes(records, time.perf_counter() - start, sum(part["cpu_s"] for part in parts))
    agg["smoothness"] = smoothness(_Steps({k: [v for part in parts for v in part[k]] for k in _STEP_KEYS}))
    return {"per_episode": records, "aggregated": agg}


_STEP_KEYS = {"change": "action_change", "source": "action_source", "episode": "episode"}


class _Steps:
    """The step-log columns `smoothness` reads, gathered from every rank."""

    def __init__(self, columns: dict[str, list[Any]]) -> None:
        self.columns = {_STEP_KEYS[k]: np.asarray(v) for k, v in columns.items()}

    def column(self, name: str) -> np.ndarray:
        return self.columns[name]


def _run_block(
    policy: DiffusionPolicy,
    block: EvalConfig,
    offset: int,
    video_dir: Path | None,
    task: Task | None,
    ranks: DistInfo,
) -> dict[str, Any]:
    """Run this rank's episodes; records and step columns renumbered to the global episode index."""
    own_dir = video_dir if offset == 0 or video_dir is None else video_dir / f".rank{ranks.rank}"
    result = run_rollouts(
        policy, block, reference_control(), video_dir=own_dir if block.max_videos else None, task=task
    )
    records = []
    for rec in result.per_episode:
        rec = {**rec, "episode_ix": rec["episode_ix"] + offset}
        if rec["video_path"] is not None and own_dir != video_dir:  # move to the one-process name
            final = video_dir / f"eval_episode_{rec['episode_ix']}.mp4"
            Path(rec["video_path"]).replace(final)
            rec["video_path"] = str(final)
        records.append(rec)
    if own_dir != video_dir and own_dir is not None and own_dir.exists():
        own_dir.rmdir()
    steps = result.steps
    return {
        "per_episode": records,
        "cpu_s": result.aggregated["cpu_s"],
        "change": steps.column("action_change").tolist(),
        "source": steps.column("action_source").tolist(),
        "episode": (steps.column("episode") + offset).tolist(),
    }


def format_eval(result: dict[str, Any]) -> str:
    """The one-line summary `parapolicy-eval` prints."""
    agg = result["aggregated"]
    lo, hi = agg["pc_success_ci95"]
    return (
        f"mean_score {agg['mean_score']:.3f} | success {agg['pc_success']:.1f}% (95% CI {lo:.1f}-{hi:.1f}) "
        f"over {agg['n_episodes']} episodes | {agg['eval_s']:.0f} s"
    )
