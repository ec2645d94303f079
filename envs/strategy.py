"""Label the strategy of a PushT episode from its states: which side of the T the first push uses.

The label needs only the recorded ``state`` rows (agent x, y, block x, y, angle), so it applies to
expert demonstrations and to policy rollouts alike.

Definition (`first_push`): skip the steps until the pusher is first clear of the block (more than
``AGENT_RADIUS + clear_margin`` px from the T: a start with the pusher touching or inside the block is
not a choice); the *first push* is then the first step after which the block has moved (its origin by
more than ``move_tol`` px or its angle by more than ``move_tol / 60`` rad, i.e. ``move_tol`` px at the bar's
end) with the pusher touching the T (clearance below ``AGENT_RADIUS + touch_margin``). Its label is the
pusher's position in the block frame at that step:

* ``side``: ``left`` if block-frame x < -``axis_margin``, ``right`` if > ``axis_margin``, else ``centre``.
  The T is mirror-symmetric about its stem axis, so left and right are mirror strategies; at angle 0
  (stem pointing down on screen) left is the screen's left.
* ``part``: ``bar`` (block-frame y < 30, the top bar) or ``stem``.

Episodes with no such push are labelled ``none``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .expert_paths import clearance
from .physics import AGENT_RADIUS

LABELS = ("left", "right", "centre", "none")
BAR_DEPTH = 30.0  # block-frame y of the bar's underside


@dataclass(frozen=True)
class FirstPush:
    """Where the first push of an episode happened (``step`` -1 and ``side`` ``none`` when none did)."""

    side: str
    part: str
    step: int
    local: tuple[float, float]
    """Pusher centre in the block frame at that step (px)."""


def first_push(
    states: np.ndarray,
    clear_margin: float = 3.0,
    touch_margin: float = 2.0,
    move_tol: float = 0.5,
    axis_margin: float = 5.0,
) -> FirstPush:
    """The first push of an episode from its ``(T, 5)`` states (see the module docstring)."""
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 2 or states.shape[1] != 5:
        raise ValueError(f"states must have shape (T, 5) (agent x, y, block x, y, angle), got {states.shape}")
    free = False
    for t in range(len(states) - 1):
        ax, ay, bx, by, th = states[t + 1]
        gap = clearance(ax, ay, (bx, by, th))
        if not free:  # the first clear state: the transition out of it is already a candidate push
            free = clearance(*states[t, :2], tuple(states[t, 2:])) > AGENT_RADIUS + clear_margin
            if not free:
                continue
        moved = (
            math.hypot(bx - states[t, 2], by - states[t, 3]) > move_tol
            or abs(th - states[t, 4]) * 60.0 > move_tol
        )
        if moved and gap < AGENT_RADIUS + touch_margin:
            c, s = math.cos(th), math.sin(th)
            lx, ly = c * (ax - bx) + s * (ay - by), -s * (ax - bx) + c * (ay - by)
            side = "left" if lx < -axis_margin else "right" if lx > axis_margin else "centre"
            return FirstPush(side, "bar" if ly < BAR_DEPTH else "stem", t + 1, (lx, ly))
    return FirstPush("none", "none", -1, (math.nan, math.nan))


def shares(labels: Iterable[str]) -> dict[str, float]:
    """Fraction of each label in ``labels`` (every one of `LABELS` present, 0 if absent)."""
    counts = Counter(labels)
    total = sum(counts.values())
    if total == 0:
        raise ValueError("shares() needs at least one label")
    unknown = set(counts) - set(LABELS)
    if unknown:
        raise ValueError(f"unknown label(s) {sorted(unknown)}; allowed: {LABELS}")
    return {label: counts[label] / total for label in LABELS}


def matched_start_summary(rows: list[dict]) -> dict:
    """Summary of episodes run from matched start states.

    ``rows``: one dict per episode with ``seed`` (the start state), ``side`` and ``part`` (`first_push`),
    ``success``, ``n_steps`` and optionally ``drawn_side`` (the side a multimodal expert drew). Returns
    success rate, pooled side (and side-part) shares, the fraction of start states showing both ``left``
    and ``right``, the mean share of each start state's most common side (1.0: one strategy per start
    state) and how often the label equals the drawn side.
    """
    by_start: dict[int, list[str]] = {}
    for r in rows:
        by_start.setdefault(r["seed"], []).append(r["side"])
    majority = [Counter(sides).most_common(1)[0][1] / len(sides) for sides in by_start.values()]
    both = [("left" in s and "right" in s) for s in by_start.values()]
    drawn = [r for r in rows if r.get("drawn_side")]
    return {
        "episodes": len(rows),
        "start_states": len(by_start),
        "success_rate": sum(r["success"] for r in rows) / len(rows),
        "mean_steps": sum(r["n_steps"] for r in rows) / len(rows),
        "side_shares": shares(r["side"] for r in rows),
        "side_part_shares": {
            f"{k[0]}-{k[1]}": v / len(rows)
            for k, v in sorted(Counter((r["side"], r["part"]) for r in rows).items())
        },
        "starts_with_both_sides": sum(both) / len(both),
        "mean_majority_share": sum(majority) / len(majority),
        "label_matches_drawn_side": (
            sum(r["side"] == r["drawn_side"] for r in drawn) / len(drawn) if drawn else None
        ),
    }
