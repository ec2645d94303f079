"""Controller settings: control mode, rate, latency model, budget and miss policy (no hydra).

The semantics of each mode are in `rollout`'s module docs and ``docs/control_modes.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MODES = ("frozen", "realtime_sim", "wallclock")
ON_MISS = ("hold", "fallback", "stop")
STITCH_RULES = ("drop", "inpaint")
STITCH_OVERLAPS = ("exp", "linear", "none")
REQUEST_RULES = ("every_ta", "in_time")
FORECASTS = ("none", "robot", "robot_and_block")
LATENCY_MODEL_HELP = "'measured', 'fixed:<ms>' or 'per_call:<ms>[,<ms_per_row>]'"


@dataclass(frozen=True)
class LatencyModel:
    """How the plan latency that drives the ``realtime_sim`` timeline is obtained.

    Attributes:
        kind: ``measured`` (the plan's wall time), ``fixed`` (``ms`` per plan) or ``per_call``
            (``ms + per_row_ms * rows`` summed over the plan's denoiser calls: deterministic, and it
            follows the work each sampler really did).
        ms: fixed milliseconds per plan, or per denoiser call.
        per_row_ms: extra milliseconds per batch row of a call (``per_call`` only).
    """

    kind: str = "measured"
    ms: float = 0.0
    per_row_ms: float = 0.0

    @classmethod
    def parse(cls, text: str) -> LatencyModel:
        """Parse ``measured``, ``fixed:<ms>`` or ``per_call:<ms>[,<ms_per_row>]`` (ValueError otherwise)."""
        raw = str(text).strip()
        if raw == "measured":
            return cls()
        kind, sep, args = raw.partition(":")
        try:
            nums = [float(a) for a in args.split(",")] if sep else []
        except ValueError:
            nums = []
        if kind == "fixed" and len(nums) == 1 and nums[0] >= 0 and math.isfinite(nums[0]):
            return cls("fixed", nums[0])
        if kind == "per_call" and len(nums) in (1, 2) and all(n >= 0 and math.isfinite(n) for n in nums):
            return cls("per_call", nums[0], nums[1] if len(nums) == 2 else 0.0)
        raise ValueError(f"control.latency_model must be {LATENCY_MODEL_HELP} with ms >= 0, got {text!r}")

    def latency_ms(self, measured_ms: float, rows_per_call: Sequence[int]) -> float:
        """The plan latency under this model."""
        if self.kind == "fixed":
            return self.ms
        if self.kind == "per_call":
            return float(sum(self.ms + self.per_row_ms * r for r in rows_per_call))
        return measured_ms


@dataclass
class ControlConfig:
    """The controller: control mode, rate, latency budget and what to do on a missed deadline."""

    mode: str = "frozen"
    """``frozen`` (the world waits), ``realtime_sim`` (simulated latency) or ``wallclock`` (real time)."""
    hz: float = 10.0
    """Control rate (PushT: 10 Hz, one env step per tick)."""
    budget_ms: float | None = None
    """Latency budget of a plan and of a control step; None: one control period (1000 / hz)."""
    on_miss: str = "hold"
    """A tick without a planned action: ``hold`` (re-send the last target), ``fallback`` (the task's safe
    action; PushT: the pusher's current position) or ``stop`` (end the episode)."""
    max_consecutive_misses: int | None = None
    """Stop the episode after this many missed steps in a row (None: never)."""
    latency_model: str = "measured"
    """``realtime_sim`` only: ``measured``, ``fixed:<ms>`` or ``per_call:<ms>[,<ms_per_row>]``."""
    use_plan_tail: bool = True
    """While the next plan is late, execute the previous plan's rows beyond Ta (up to the horizon)."""
    wait_first_plan: bool = True
    """``realtime_sim``/``wallclock``: the world waits for the first plan of each episode (a robot starts
    when its controller is ready)."""
    warmup_plans: int = 2
    """Plans run before the episodes on the first observation, timed and reported apart (not counted)."""
    n_action_steps: int | None = None
    """Actions executed per plan, Ta (None: the checkpoint's); at most horizon - n_obs_steps + 1."""
    auto_budget: bool = False
    """Choose the Picard window and iteration cap for ``budget_ms`` from the measured cost curve."""
    budget_margin: float = 0.9
    """Fraction of the budget the automatic choice plans to use (the rest absorbs jitter)."""
    stitch: str = "drop"
    """``realtime_sim``/``wallclock``: how a late plan joins the one being executed. ``drop``: rows for
    ticks already past are dropped (DiffusionPolicy's rule); ``inpaint``: the plan is also sampled to
    continue the current one (its rows for the expected delay imposed, then a decaying overlap; see
    `stitching`). ``frozen`` ignores it (nothing executes while the world waits)."""
    stitch_overlap: str = "exp"
    """``stitch=inpaint``: the weights of the current plan's rows after the committed ones: ``exp``
    (real-time chunking's exponential decay), ``linear`` (a linear decay) or ``none`` (only the
    committed rows are imposed)."""
    stitch_overlap_rows: int | None = None
    """``stitch=inpaint``: the decaying overlap covers at most this many rows after the committed ones
    (None: the rest of the current plan)."""
    request: str = "every_ta"
    """``realtime_sim``/``wallclock``: when the next plan is requested. ``every_ta``: Ta ticks after the
    previous request; ``in_time``: when the current plan's remaining rows fall to the expected delay plus
    ``request_margin``."""
    request_margin: int = 1
    """Ticks of slack of ``request=in_time``."""
    delay_percentile: float = 90.0
    """The expected delay is this percentile of recent plan latencies (exact for ``fixed`` models)."""
    delay_window: int = 20
    """How many recent plans the expected delay is estimated over."""
    forecast: str = "none"
    """``realtime_sim``/``wallclock``: what a plan requested at tick s with expected delay d is conditioned
    on. ``none``: the observation of tick s (d ticks old when the plan starts); ``robot``: the
    observation forecast for tick s+d, the robot's own state advanced through the d actions it
    executes meanwhile by its controller (the task's model; PushT: the pusher's PD law, exact), the
    rest as observed at s; the plan then starts at tick s+d (nothing of it is dropped when it is on
    time); ``robot_and_block``: the same, and the task's objects forecast too (PushT: the block, by a
    model of its motion under the pusher learned from demonstrations, `tasks/pusht_block_model.py`;
    keypoint policies only). See `stitching`."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"control.mode must be one of {MODES}, got {self.mode!r}")
        if self.on_miss not in ON_MISS:
            raise ValueError(f"control.on_miss must be one of {ON_MISS}, got {self.on_miss!r}")
        if not (self.hz > 0 and math.isfinite(self.hz)):
            raise ValueError(f"control.hz must be > 0, got {self.hz}")
        if self.budget_ms is not None and not (self.budget_ms > 0 and math.isfinite(self.budget_ms)):
            raise ValueError(f"control.budget_ms must be > 0 or null, got {self.budget_ms}")
        if self.max_consecutive_misses is not None and self.max_consecutive_misses < 1:
            raise ValueError(
                f"control.max_consecutive_misses must be >= 1 or null, got {self.max_consecutive_misses}"
            )
        if self.warmup_plans < 0:
            raise ValueError(f"control.warmup_plans must be >= 0, got {self.warmup_plans}")
        if self.n_action_steps is not None and self.n_action_steps < 1:
            raise ValueError(f"control.n_action_steps must be >= 1 or null, got {self.n_action_steps}")
        if not 0 < self.budget_margin <= 1:
            raise ValueError(f"control.budget_margin must be in (0, 1], got {self.budget_margin}")
        if self.stitch not in STITCH_RULES:
            raise ValueError(f"control.stitch must be one of {STITCH_RULES}, got {self.stitch!r}")
        if self.stitch_overlap not in STITCH_OVERLAPS:
            raise ValueError(
                f"control.stitch_overlap must be one of {STITCH_OVERLAPS}, got {self.stitch_overlap!r}"
            )
        if self.stitch_overlap_rows is not None and self.stitch_overlap_rows < 0:
            raise ValueError(
                f"control.stitch_overlap_rows must be >= 0 or null, got {self.stitch_overlap_rows}"
            )
        if self.request not in REQUEST_RULES:
            raise ValueError(f"control.request must be one of {REQUEST_RULES}, got {self.request!r}")
        if self.request_margin < 0:
            raise ValueError(f"control.request_margin must be >= 0, got {self.request_margin}")
        if not 0 <= self.delay_percentile <= 100:
            raise ValueError(f"control.delay_percentile must be in [0, 100], got {self.delay_percentile}")
        if self.forecast not in FORECASTS:
            raise ValueError(f"control.forecast must be one of {FORECASTS}, got {self.forecast!r}")
        if self.delay_window < 1:
            raise ValueError(f"control.delay_window must be >= 1, got {self.delay_window}")
        model = LatencyModel.parse(self.latency_model)
        if self.mode == "wallclock" and model.kind != "measured":
            raise ValueError("control.latency_model must be 'measured' in wallclock mode (time is real)")
        if self.mode == "frozen" and model.kind != "measured":
            raise ValueError(
                "control.latency_model must be 'measured' in frozen mode (the world waits for every plan; "
                f"a modelled latency drives realtime_sim only), got {self.latency_model!r}"
            )

    @property
    def period_ms(self) -> float:
        """One control period in milliseconds."""
        return 1000.0 / self.hz

    @property
    def effective_budget_ms(self) -> float:
        """``budget_ms``, or one control period when unset."""
        return self.budget_ms if self.budget_ms is not None else self.period_ms
