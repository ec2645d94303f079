"""The multimodal mode of the planning expert: several strategies from one start state.

The default expert is a deterministic planner: from a given start state it always pushes the same way,
so its demonstrations are nearly unimodal. In ``mode="multimodal"`` each episode draws, from its own
``strategy_seed``, a *strategy* and per-decision variations, and the planner (still simulating every
candidate exactly, so success stays high) executes choices a human might make:

* **Pushing side.** The episode picks a side of the T, left (block-frame x < -8 px) or right (> 8 px),
  and its first ``opening_pushes`` coarse pushes must use contacts on that half (falling back to all
  contacts when no push from that half makes progress). The pusher therefore goes round the block the
  one way or the other.
* **Order of pushes / path.** Far from the goal the macro is drawn uniformly among those whose progress
  per step is within ``choice_slack`` of the best, not always the best one.
* **Timing and approach path.** Every decision draws a speed scale for the approach and the coarse push,
  a detour radius, and sometimes a pause (the pusher holds still for a few steps before approaching).

Near the goal (fine mode) the deterministic two-macro beam is kept: precision needs it.
Everything is a function of ``strategy_seed``; `envs/strategy.py` labels an episode's strategy from its
recorded states.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .expert_paths import Contact

if TYPE_CHECKING:
    from .expert import ExpertConfig
    from .expert_search import Macro

SIDES = ("left", "right")


def _range(name: str, values: Sequence[float], lo: float, hi: float) -> tuple[float, float]:
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) != 2:
        raise ValueError(f"multimodal.{name} must be a [min, max] pair, got {values!r}")
    a, b = (float(v) for v in values)
    if not (math.isfinite(a) and math.isfinite(b) and lo <= a <= b <= hi):
        raise ValueError(f"multimodal.{name} must satisfy {lo} <= min <= max <= {hi}, got {values!r}")
    return a, b


@dataclass
class MultimodalConfig:
    """Knobs of the multimodal mode (used only with ``ExpertConfig.mode="multimodal"``)."""

    left_probability: float = 0.5
    """Probability that an episode's pushing side is the T's left half."""
    opening_pushes: tuple[int, int] = (1, 3)
    """[min, max] coarse pushes restricted to the chosen side (drawn uniformly per episode)."""
    choice_slack: float = 0.3
    """Coarse mode: draw among macros whose progress per step is >= (1 - slack) x the best one's."""
    speed_scale: tuple[float, float] = (0.6, 1.0)
    """[min, max] factor on the approach and coarse push speeds, drawn per decision."""
    detour_radius: tuple[float, float] = (120.0, 160.0)
    """[min, max] radius of the detour circle, drawn per decision."""
    pause_probability: float = 0.3
    """Probability that a decision starts with a pause."""
    max_pause: int = 4
    """A pause lasts 1..max_pause steps (uniform)."""

    def __post_init__(self) -> None:
        for name in ("left_probability", "choice_slack", "pause_probability"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise ValueError(f"multimodal.{name} must be in [0, 1], got {value!r}")
        lo, hi = _range("opening_pushes", self.opening_pushes, 0, 20)
        if lo != int(lo) or hi != int(hi):
            raise ValueError(f"multimodal.opening_pushes must be integers, got {self.opening_pushes!r}")
        self.opening_pushes = (int(lo), int(hi))
        self.speed_scale = _range("speed_scale", self.speed_scale, 0.1, 1.0)
        self.detour_radius = _range("detour_radius", self.detour_radius, 95.0, 250.0)
        if not isinstance(self.max_pause, int) or isinstance(self.max_pause, bool) or self.max_pause < 0:
            raise ValueError(f"multimodal.max_pause must be an integer >= 0, got {self.max_pause!r}")


SIDE_MARGIN = 8.0
"""px: contacts within this of the T's symmetry axis belong to neither side (their pushes would label
as ``centre`` in `envs/strategy.py`)."""


def contact_side(contact: Contact) -> str | None:
    """``left``/``right``: the half of the T (block-frame x sign) a contact lies on; None near the axis."""
    if contact[0] < -SIDE_MARGIN:
        return "left"
    if contact[0] > SIDE_MARGIN:
        return "right"
    return None


class EpisodeStrategy:
    """The random choices of one multimodal episode, drawn from ``strategy_seed``.

    ``side`` and ``opening_left`` (coarse pushes still bound to the side) are the episode's strategy;
    `decision` draws the per-decision variations.
    """

    def __init__(self, cfg: MultimodalConfig, strategy_seed: int) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng([int(strategy_seed), 0x6D6D])  # "mm": apart from other streams
        self.side = SIDES[0] if self.rng.random() < cfg.left_probability else SIDES[1]
        lo, hi = cfg.opening_pushes
        self.opening_left = int(self.rng.integers(lo, hi + 1))

    def decision(self, base: ExpertConfig) -> tuple[ExpertConfig, int]:
        """The planner settings of the next decision (speeds and detour redrawn) and its pause steps."""
        cfg, rng = self.cfg, self.rng
        scale = float(rng.uniform(*cfg.speed_scale))
        radius = float(rng.uniform(*cfg.detour_radius))
        pause = 0
        if cfg.max_pause > 0 and rng.random() < cfg.pause_probability:
            pause = int(rng.integers(1, cfg.max_pause + 1))
        plan_cfg = dataclasses.replace(
            base,
            approach_speed=base.approach_speed * scale,
            coarse_push_speed=base.coarse_push_speed * scale,
            detour_radius=radius,
        )
        return plan_cfg, pause

    def allow(self, contact: Contact) -> bool:
        """Whether an opening push may use ``contact`` (on the chosen side)."""
        return contact_side(contact) == self.side

    def pick(self, ranked: list[Macro], error: float, rate_offset: float) -> Macro:
        """A coarse macro: uniform among those nearly as fast as the best (``ranked`` best first).

        Progress per step is ``(error - macro error) / (steps + rate_offset)``, the coarse-mode score.
        """
        best = ranked[0]
        if best.success:
            return best

        def rate(m: Macro) -> float:
            return (error - m.error) / (len(m.targets) + rate_offset)

        best_rate = rate(best)
        if best_rate <= 0:
            return best
        floor = (1.0 - self.cfg.choice_slack) * best_rate
        near = [m for m in ranked if not m.success and rate(m) >= floor]
        return near[int(self.rng.integers(len(near)))] if near else best
