"""Smoothness of the executed actions: per-tick action change, overall and at chunk boundaries.

The change of a tick is the Euclidean distance between its action and the previous tick's (environment
units; PushT: pixels of the pusher target), recorded per step as ``action_change`` (NaN on an
episode's first step). A *boundary* tick is a fresh step that is not the episode's first (the first
action of a newly arrived plan); an *in-chunk* tick is a queued step. A plan that continues what the
robot is doing keeps the boundary changes like the in-chunk ones: ``boundary_ratio`` = mean boundary
change / mean in-chunk change (1 = boundaries are invisible).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from parapolicy.policy.control.latency import SOURCE_CODE, StepLog

__all__ = ["action_change", "smoothness"]

SMOOTHNESS_KEYS = (
    "mean_change",
    "max_change",
    "boundary_mean_change",
    "boundary_max_change",
    "inchunk_mean_change",
    "boundary_ratio",
    "n_boundaries",
)


def action_change(previous: np.ndarray | None, action: np.ndarray) -> float:
    """‖action - previous‖₂ (NaN without a previous action)."""
    if previous is None:
        return float("nan")
    return float(np.linalg.norm(np.asarray(action, dtype=np.float64) - previous))


def smoothness(steps: StepLog, episode: int | None = None) -> dict[str, Any]:
    """Mean and max action change over all steps, at boundaries and inside chunks (one episode or all).

    Returns:
        ``{mean_change, max_change, boundary_mean_change, boundary_max_change, inchunk_mean_change,
        boundary_ratio, n_boundaries}``; None where there is nothing to average.
    """
    change = steps.column("action_change")
    src = steps.column("action_source")
    keep = ~np.isnan(change)
    if episode is not None:
        keep &= steps.column("episode") == episode
    boundary = keep & (src == SOURCE_CODE["fresh"])
    inchunk = keep & (src == SOURCE_CODE["queued"])

    def mean(mask: np.ndarray) -> float | None:
        # exact sum: the same value whatever the row order (e.g. episodes split over torchrun ranks)
        return math.fsum(change[mask].tolist()) / int(mask.sum()) if mask.any() else None

    def top(mask: np.ndarray) -> float | None:
        return float(change[mask].max()) if mask.any() else None

    b, c = mean(boundary), mean(inchunk)
    return {
        "mean_change": mean(keep),
        "max_change": top(keep),
        "boundary_mean_change": b,
        "boundary_max_change": top(boundary),
        "inchunk_mean_change": c,
        "boundary_ratio": b / c if b is not None and c else None,
        "n_boundaries": int(boundary.sum()),
    }
