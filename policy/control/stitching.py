"""Delay-aware stitching of plans: what the next plan must continue, the expected delay, when to request.

While a plan requested at tick s is computed (d ticks), the robot keeps executing the current plan, so
the next plan's rows for ticks s .. s+d-1 are known before it is sampled (the *committed* rows), and
the rest of the current plan is what the robot would continue with. With ``control.stitch=inpaint``
the controller samples the next plan conditioned on them (`diffusion.inpaint`): weight 1 on the
committed rows and on the row of tick s-1 (the action just sent), then the exponential decay of
real-time chunking (Black et al. 2025) over the current plan's remaining rows, then 0. With
``stitch=drop`` (DiffusionPolicy's rule) nothing is known to the sampler; either way the rows for ticks
already past are dropped when the plan arrives.

With ``control.forecast=robot`` the plan is not conditioned on the (then d ticks old) observation of
the request tick: the robot's own state is forecast through the d actions it executes meanwhile (its
controller is known: `Task.forecast`), the rest of the observation is the latest, and the plan starts
at tick s+d, so an on-time plan drops nothing; with ``inpaint`` it continues the last of those actions.

The expected delay d comes from `DelayEstimator`: exact for a ``fixed`` latency model, otherwise a
high percentile of the latencies of recent plans (``control.delay_percentile`` over the last
``control.delay_window`` plans). With ``control.request=in_time`` the next plan is requested when the
current plan's remaining rows fall to d + ``control.request_margin`` instead of every Ta ticks.

The rows are numpy in environment units; the planner normalises them.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from parapolicy.policy.control.settings import STITCH_OVERLAPS
from parapolicy.policy.diffusion.inpaint import soft_prefix_weights

__all__ = [
    "DelayEstimator",
    "Expectation",
    "KnownRows",
    "executed_actions",
    "expectation",
    "in_time_request",
    "known_rows",
]


@dataclass(frozen=True)
class KnownRows:
    """The known rows of a plan to be sampled, in environment units.

    Attributes:
        actions: (H, Da) known values (rows of weight 0 hold zeros).
        weight: (H,) weights in [0, 1].
        committed: rows that will be executed before the plan can arrive (weight 1 after ``start``).
    """

    actions: np.ndarray
    weight: np.ndarray
    committed: int


def known_rows(
    current: np.ndarray,
    row: int,
    delay: int,
    horizon: int,
    start: int,
    last_action: np.ndarray | None = None,
    overlap: str = "exp",
    hold: bool = False,
    overlap_rows: int | None = None,
) -> KnownRows | None:
    """What the plan requested now must continue: the actions the robot executes while it is computed.

    The robot executes ``current[row]`` at the request tick, ``current[row + i]`` i ticks later while
    rows are left, and then (``hold``) re-sends its last action until the new plan arrives; the new
    plan's row ``start + i`` is meant for the request tick + i (``start`` = To - 1, the row of the
    observation's tick). ``row`` is the current plan's next row, not the ticks since its request: a plan
    that arrives with every row in the past executes its last row (`Timeline.install`).

    Args:
        current: (n, Da) the current plan's executable rows.
        row: the current plan's row executed at the request tick (may be ``n``: none left).
        delay: expected delay d in ticks: the robot's actions of ticks ``request .. request+d-1`` are
            imposed (weight 1).
        horizon: H, rows of the new plan.
        start: row of the request tick in the new plan (To - 1).
        last_action: (Da,) the action sent at tick ``request - 1`` (weight 1 on row ``start - 1``), or None.
        overlap: how the rows after the committed ones are pulled toward the rest of the current plan:
            ``exp`` (real-time chunking's decaying weights), ``linear`` (a linear decay) or ``none``
            (not at all: only the committed rows and the last action are known).
        hold: the robot re-sends its last action on a tick without a planned row (``on_miss=hold``),
            so those ticks within the delay are known too; False: they are left free.
        overlap_rows: at most this many overlap rows (the decay over them); None: the rest of the plan.

    Returns:
        `KnownRows`, or None when nothing is known (the current plan has no rows left and no last action).
    """
    if delay < 0 or not 0 <= start < horizon or row < 0:
        raise ValueError(
            f"need delay >= 0, row >= 0 and 0 <= start < horizon, got {delay}, {row}, {start}, {horizon}"
        )
    left = max(0, min(len(current) - row, horizon - start))  # its rows from the request tick on
    planned = min(delay, left)
    weight = _overlap_weights(horizon, start, planned, left, overlap, overlap_rows)  # (H,)
    actions = np.zeros((horizon, current.shape[-1]))
    if left:
        actions[start : start + left] = current[row : row + left]
    if last_action is not None and start >= 1:
        actions[start - 1], weight[start - 1] = last_action, 1.0
    held = min(delay, horizon - start) - planned if hold else 0  # ticks re-sending the last action
    last = current[row + left - 1] if left else last_action
    if held > 0 and last is not None:
        actions[start + planned : start + planned + held] = last
        weight[start + planned : start + planned + held] = 1.0
    else:
        held = 0
    if not weight.any():
        return None
    return KnownRows(actions, weight, planned + held)


def _overlap_weights(
    horizon: int, start: int, planned: int, left: int, overlap: str, overlap_rows: int | None
) -> np.ndarray:
    """(H,) weights: 1 on the ``planned`` rows after ``start``, then the ``overlap`` decay (`known_rows`)."""
    if overlap not in STITCH_OVERLAPS or (overlap_rows is not None and overlap_rows < 0):
        raise ValueError(
            f"need overlap in {STITCH_OVERLAPS} and overlap_rows >= 0, got {overlap!r}, {overlap_rows}"
        )
    end = planned if overlap == "none" else left
    if overlap_rows is not None:
        end = min(end, planned + overlap_rows)
    decay = "linear" if overlap == "linear" else "exp"
    return soft_prefix_weights(horizon, planned, end, start=start, decay=decay, dtype=torch.float64).numpy()


@dataclass(frozen=True)
class Expectation:
    """What the controller expects of a plan it requests: its delay and the rows it must continue.

    ``forecast`` (``control.forecast=robot``): the (d, Da) actions the robot executes before the plan
    starts; the plan is then conditioned on the observation forecast through them and starts d ticks
    after the request (``known`` is relative to that tick).
    """

    ticks: int = -1  # expected delay in ticks (-1: none, the world waits for this plan)
    latency_ms: float = float("nan")
    known: KnownRows | None = None
    forecast: np.ndarray | None = None

    @property
    def start_offset(self) -> int:
        """Ticks from the request to the plan's first tick (d with a forecast, else 0)."""
        return 0 if self.forecast is None else len(self.forecast)

    @property
    def inpainted_rows(self) -> int:
        """Rows imposed with weight 1 (0 without known rows)."""
        return 0 if self.known is None else int((self.known.weight == 1).sum())


def expectation(
    estimator: DelayEstimator,
    inpaint: bool,
    current: tuple[np.ndarray, int] | None,
    horizon: int,
    start: int,
    last_action: np.ndarray | None,
    overlap: str = "exp",
    hold: bool = False,
    overlap_rows: int | None = None,
    forecast: bool = False,
) -> Expectation:
    """The `Expectation` of a plan requested at tick ``request`` while the world does not wait.

    Args:
        estimator: the run's delay estimate.
        inpaint: ``stitch=inpaint``: also work out the known rows.
        current: the current plan's executable rows (n, Da) and its row for the request tick, or None.
        horizon, start, last_action, overlap, hold, overlap_rows: as for `known_rows`.
        forecast: ``control.forecast=robot``: with an expected delay d > 0 the plan is meant to start at
            request + d, conditioned on the forecast through the d actions executed meanwhile
            (`executed_actions`); its known rows (``inpaint``) are then the last of those actions (row
            ``start - 1``) and the overlap with the current plan's rows after them.
    """
    d = estimator.ticks()
    executed = executed_actions(current, d, last_action) if forecast and d > 0 else None
    known = None
    if inpaint and current is not None:
        if executed is None:  # the plan starts now: its first d rows are committed to the current plan's
            row, committed, last = current[1], d, last_action
        else:  # the plan starts at request + d, after the actions the robot executes
            row, committed, last = current[1] + d, 0, executed[-1]
        known = known_rows(current[0], row, committed, horizon, start, last, overlap, hold, overlap_rows)
    return Expectation(d, estimator.latency_ms(), known, executed)


def executed_actions(
    current: tuple[np.ndarray, int] | None, delay: int, last_action: np.ndarray | None
) -> np.ndarray | None:
    """The (delay, Da) actions the robot sends during the next ``delay`` ticks: the current plan's rows
    from its next one, then (rows run out) its last action again; None when nothing is known."""
    rows = [] if current is None else list(current[0][current[1] : current[1] + delay])
    last = rows[-1] if rows else last_action
    if last is None:
        return None
    rows += [last] * (delay - len(rows))
    return np.asarray(rows, dtype=np.float64)


def in_time_request(current_start: int, n_rows: int, delay: int, margin: int) -> int:
    """The tick at which the current plan's remaining rows fall to ``delay + margin`` (request then);
    ``current_start``: the current plan's first tick."""
    return current_start + n_rows - delay - margin


class DelayEstimator:
    """Expected plan delay in ticks: exact for a fixed latency, else a high percentile of recent plans.

    Args:
        period_ms: control period.
        percentile: the percentile of recent latencies (0-100).
        window: how many recent plans it is taken over.
        fixed_ms: a known, constant plan latency (``fixed`` latency model), or None.
    """

    def __init__(
        self, period_ms: float, percentile: float, window: int, fixed_ms: float | None = None
    ) -> None:
        if not 0 <= percentile <= 100 or window < 1:
            raise ValueError(f"need 0 <= percentile <= 100 and window >= 1, got {percentile}, {window}")
        self.period_ms, self.percentile, self.fixed_ms = period_ms, percentile, fixed_ms
        self.recent: deque[float] = deque(maxlen=window)

    def observe(self, latency_ms: float) -> None:
        """Add one plan's latency (ms)."""
        if math.isfinite(latency_ms):
            self.recent.append(float(latency_ms))

    def latency_ms(self) -> float:
        """The expected latency: the fixed one, else the percentile of recent plans (0 before any)."""
        if self.fixed_ms is not None:
            return self.fixed_ms
        if not self.recent:
            return 0.0
        return float(np.percentile(np.fromiter(self.recent, float), self.percentile))

    def ticks(self) -> int:
        """The expected delay d = ceil(latency / period) (the timeline's rule for a plan's arrival)."""
        return max(0, math.ceil(self.latency_ms() / self.period_ms - 1e-9))
