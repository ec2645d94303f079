"""Typed records of a rollout: fault codes, plans (one per action chunk), episode records, the result.

A `Plan` is what the planner (`planner.py`) returns for one episode; its `Plan.chunk_row` is the row of
the chunk log (`latency.ChunkLog`). An `EpisodeRecord` holds one episode's outcome and counters; its
`EpisodeRecord.as_dict` is the ``per_episode`` entry of ``eval_info.json`` (keys in schema order).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.control.faults import Fault
from parapolicy.policy.control.latency import ChunkLog, SectionTimer, StepLog


@dataclass
class PlanStats:
    """The sampler's statistics of one plan (zeros for a fault plan)."""

    model_calls: int = 0
    model_evals: float = 0.0  # rows evaluated per episode of the batch
    sequential_passes: int = 0
    picard_iters: int = 0
    converged: int = 0
    final_residual: float = float("nan")
    warm_started: bool = False
    rows_per_call: tuple[int, ...] = ()


@dataclass
class Plan:
    """One plan for one episode: its actions for ticks ``start .. start + len(actions) - 1``.

    It was requested ``lead`` ticks before ``start`` (``control.forecast``: the expected delay d it was
    forecast through; 0 without a forecast), at tick ``request``.

    Times are ``perf_counter_ns`` stamps; ``latency_ms`` is what drives the timeline (measured or from
    the latency model), ``compute_ms`` the measured wall time. ``arrival``, ``next_row`` and ``used``
    are the timeline's bookkeeping.
    """

    chunk: int
    start: int  # its first tick
    actions: np.ndarray | None  # (n_rows, Da); None on a fault
    fault: Fault
    latency_ms: float
    compute_ms: float
    denoiser_ms: float
    observation_ms: float
    t_obs_ns: int
    t_ready_ns: int
    batch_rows: int
    stats: PlanStats = field(default_factory=PlanStats)
    expected_delay: int = -1  # ticks the controller expected it to take (-1: none; see `stitching`)
    expected_latency_ms: float = float("nan")
    inpainted_rows: int = 0  # rows it was sampled to continue with weight 1 (stitch=inpaint)
    arrival: int = 0
    next_row: int = 0
    used: bool = False
    lead: int = 0  # ticks from its request to ``start``

    @property
    def request(self) -> int:
        """The tick it was requested at (the tick of its observation)."""
        return self.start - self.lead

    def chunk_row(self, episode: int, ready_step: int, budget_ms: float) -> dict[str, Any]:
        """The `latency.ChunkLog` row of this plan, installed at tick ``ready_step``."""
        st = self.stats
        return {
            "episode": episode,
            "chunk": self.chunk,
            "request_step": self.request,
            "start_step": self.start,
            "ready_step": ready_step,
            "latency_ms": self.latency_ms,
            "compute_ms": self.compute_ms,
            "denoiser_ms": self.denoiser_ms,
            "observation_ms": self.observation_ms,
            "budget_ms": budget_ms,
            "over_budget": self.latency_ms > budget_ms,
            "ticks_late": ready_step - self.start,
            "delay_ticks": ready_step - self.request,
            "batch_rows": self.batch_rows,
            "model_calls": st.model_calls,
            "model_evals": st.model_evals,
            "sequential_passes": st.sequential_passes,
            "picard_iters": st.picard_iters,
            "converged": st.converged,
            "final_residual": st.final_residual,
            "warm_started": st.warm_started,
            "fault": int(self.fault),
            "expected_delay": self.expected_delay,
            "expected_latency_ms": self.expected_latency_ms,
            "inpainted_rows": self.inpainted_rows,
        }


# the controller counters summed into ``aggregated`` as ``total_<name>``
TOTAL_COUNTERS = (
    "deadline_misses",
    "held_steps",
    "fallback_steps",
    "ticks_lost",
    "tail_steps",
    "nan_chunks",
    "denoiser_errors",
    "observation_errors",
    "n_chunks",
)


@dataclass
class EpisodeRecord:
    """One episode's outcome and controller counters (field order = ``eval_info.json`` key order)."""

    episode_ix: int
    seed: int
    max_reward: float = 0.0
    sum_reward: float = 0.0
    success: bool = False
    n_steps: int = 0
    final_coverage: float = 0.0
    deadline_misses: int = 0
    held_steps: int = 0
    fallback_steps: int = 0
    fresh_steps: int = 0
    queued_steps: int = 0
    tail_steps: int = 0
    ticks_lost: int = 0
    n_chunks: int = 0
    nan_chunks: int = 0
    denoiser_errors: int = 0
    observation_errors: int = 0
    pacing_overruns: int = 0
    stopped: bool = False
    stop_reason: str | None = None
    stop_step: int | None = None
    video_path: str | None = None
    mean_change: float | None = None  # per-tick action change (`smoothness`): mean and max
    max_change: float | None = None
    boundary_mean_change: float | None = None  # the same at chunk boundaries only
    boundary_max_change: float | None = None

    def count_source(self, source: str) -> None:
        """Count one step whose action came from ``source`` (``fresh``/``queued``/``held``/``fallback``)."""
        if source == "fresh":
            self.fresh_steps += 1
        elif source == "queued":
            self.queued_steps += 1
        elif source == "held":
            self.held_steps += 1
        elif source == "fallback":
            self.fallback_steps += 1
        else:
            raise ValueError(f"unknown action source {source!r}")

    def count_fault(self, fault: Fault) -> None:
        """Count one plan that failed with ``fault``."""
        setattr(self, fault.counter, getattr(self, fault.counter) + 1)

    def add_step(self, reward: float, progress: float, success: bool) -> None:
        """Account one executed control step."""
        self.n_steps += 1
        self.max_reward = max(self.max_reward, float(reward))
        self.sum_reward += float(reward)
        self.final_coverage = float(progress)
        self.success = self.success or bool(success)

    def stop(self, reason: str, step: int) -> None:
        """Mark the episode stopped by the controller at ``step``."""
        self.stopped, self.stop_reason, self.stop_step = True, reason, step

    def set_smoothness(self, summary: dict[str, Any]) -> None:
        """Copy the episode's `smoothness.smoothness` summary into the record."""
        for key in ("mean_change", "max_change", "boundary_mean_change", "boundary_max_change"):
            setattr(self, key, summary[key])

    def as_dict(self) -> dict[str, Any]:
        """The ``per_episode`` entry of ``eval_info.json``."""
        return dataclasses.asdict(self)


@dataclass
class RolloutResult:
    """Everything one rollout run produced.

    Attributes:
        mode: the control mode.
        per_episode: one record per episode (`EpisodeRecord.as_dict`).
        aggregated: `evaluation.aggregate` metrics plus controller totals.
        steps: one row per control step (warm-up excluded).
        chunks: one row per plan.
        sections: wall time per section (observation, denoiser, sampler, controller, env_step).
        warmup_ms: latencies of the warm-up plans (excluded from every statistic).
        latency: the summary block (`latency.latency_summary`).
        sampler: the sampler that ran (after an automatic budget choice).
        budget: the automatic budget choice's report, or None.
    """

    mode: str
    per_episode: list[dict[str, Any]]
    aggregated: dict[str, Any]
    steps: StepLog
    chunks: ChunkLog
    sections: SectionTimer
    warmup_ms: list[float]
    latency: dict[str, Any]
    sampler: SamplerConfig
    budget: dict[str, Any] | None = None

    def eval_info(self) -> dict[str, Any]:
        """The lerobot-compatible ``eval_info.json`` body (``per_episode``, ``aggregated``, ``latency``)."""
        return {
            "per_episode": self.per_episode,
            "aggregated": self.aggregated,
            "latency": self.latency,
            "mode": self.mode,
            "sampler": dataclasses.asdict(self.sampler),
            "budget_choice": self.budget,
        }
