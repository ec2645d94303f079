"""Simulation-scored macro search of the PushT planning expert.

A *macro* is an open-loop list of pusher targets: approach a contact on the T without touching it, then
push along the contact's inward normal to a depth ``D`` past the face, hold, back off a little. Every
(contact, D) candidate is rolled out on the planner's own `PushTWorld`, restored from a snapshot of the
real world (so a prediction matches the real env), and scored: far from the goal by its progress per step
(pose error removed / steps), near it by the remaining pose error plus a per-step price. Near the goal the
best few macros are expanded once more (a two-macro beam), because one push has two free parameters
(where, how deep) and the pose error three. A macro that reaches success wins on length.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .expert_paths import (
    Contact,
    Point,
    approach_path,
    clearance,
    contact_world,
    profile,
    quantise,
    segment_clear,
)
from .geometry import GOAL_POSE, SUCCESS_THRESHOLD, coverage
from .physics import AGENT_RADIUS, PhysicsSnapshot, PushTWorld

if TYPE_CHECKING:
    from .expert import ExpertConfig


def _area_moments() -> tuple[float, float]:
    """Centroid height and mean squared radius about the centroid of the T's area (block frame)."""
    boxes = ((120.0, 30.0, 15.0), (30.0, 90.0, 75.0))  # width, height, centre y
    area = sum(w * h for w, h, _ in boxes)
    cy = sum(w * h * y for w, h, y in boxes) / area
    second = sum(w * h * ((w * w + h * h) / 12.0 + (y - cy) ** 2) for w, h, y in boxes)
    return cy, second / area


_CY, _SIGMA2 = _area_moments()
_GX = float(GOAL_POSE[0]) - math.sin(float(GOAL_POSE[2])) * _CY
_GY = float(GOAL_POSE[1]) + math.cos(float(GOAL_POSE[2])) * _CY
_GTH = float(GOAL_POSE[2])


def pose_error(x: float, y: float, th: float) -> float:
    """RMS distance (px) between the T's area points at pose ``(x, y, th)`` and at the goal pose.

    Closed form: centroid offset plus the rotation term ``2 sigma^2 (1 - cos dtheta)``; a cheap, smooth
    stand-in for coverage (1 px of error costs about 2-3 % coverage).
    """
    dx = x - math.sin(th) * _CY - _GX
    dy = y + math.cos(th) * _CY - _GY
    return math.sqrt(dx * dx + dy * dy + 2.0 * _SIGMA2 * (1.0 - math.cos(th - _GTH)))


@dataclass
class Macro:
    """One simulated candidate: its targets and what they lead to."""

    targets: list[Point]
    n_approach: int
    """Targets before the push starts."""
    error: float
    """Predicted `pose_error` after the last target (or at success)."""
    success: bool
    """Whether coverage passes the threshold (the targets then end at that step)."""
    end: PhysicsSnapshot
    score: float = 0.0


class MacroSearch:
    """Generates and scores macros on a private world; `choose` returns the macro to execute."""

    def __init__(self, cfg: ExpertConfig, world: PushTWorld, contacts: tuple[Contact, ...]) -> None:
        self.cfg = cfg
        self.world = world
        self.contacts = contacts
        self.sim_steps = 0  # simulated control steps (for profiling)
        self._cog_local = tuple(world.block.center_of_gravity)

    # ------------------------------------------------------------------------------------------
    def _begin(self, snap: PhysicsSnapshot, fresh: Callable[[], PushTWorld] | None) -> PushTWorld:
        """A world in state ``snap`` to roll out in: the private one restored, or ``fresh()`` (a rebuilt
        copy of the env's world whose state *and* cached contacts equal the real ones)."""
        if fresh is not None:
            return fresh()
        self.world.restore(snap)
        return self.world

    def _run(self, world: PushTWorld, targets: list[Point], check: bool) -> int | None:
        """Step ``world`` through ``targets``; with ``check``, stop at the first success.

        Returns the number of targets after which the task is solved, or None.
        """
        gate = self.cfg.success_gate
        block = world.block
        self.sim_steps += len(targets)
        for k, target in enumerate(targets):
            world.step_control(target)
            if check:
                (x, y), th = block.position, block.angle
                if pose_error(x, y, th) < gate and coverage((x, y, th)) > SUCCESS_THRESHOLD:
                    return k + 1
        return None

    @staticmethod
    def _finish(world: PushTWorld, targets: list[Point], n_approach: int, n_done: int | None) -> Macro:
        if n_done is not None:
            targets = targets[:n_done]
        (x, y), th = world.block.position, world.block.angle
        return Macro(targets, n_approach, pose_error(x, y, th), n_done is not None, world.snapshot())

    # ------------------------------------------------------------------------------------------
    def expand(
        self,
        snap: PhysicsSnapshot,
        p0: Point,
        fine: bool,
        fresh: Callable[[], PushTWorld] | None = None,
        allow: Callable[[Contact], bool] | None = None,
        pause: int = 0,
    ) -> list[Macro]:
        """All (contact, depth) macros from state ``snap`` with the last target at ``p0``.

        ``fresh``: a factory of worlds equal to the real one including pymunk's cached contacts, used for
        the rollouts that start at ``snap`` (at an episode's start the pusher may sit inside the block,
        and how pymunk resolves that depends on the contact cache, which no snapshot holds).
        ``allow``: only contacts it accepts (default all). ``pause``: steps the target holds at ``p0``
        before an approach (not before pushing on from ``p0``).
        """
        cfg = self.cfg
        r = AGENT_RADIUS
        gap = cfg.fine_gap if fine else cfg.coarse_gap
        depths = cfg.fine_depths if fine else cfg.coarse_depths
        v_push = cfg.fine_push_speed if fine else cfg.coarse_push_speed
        hold = cfg.fine_hold_steps if fine else cfg.coarse_hold_steps
        x, y = snap.block_position
        th = snap.block_angle
        pose = (x, y, th)
        (gx, gy), c, s = self._cog_local, math.cos(th), math.sin(th)
        cog = (x + c * gx - s * gy, y + s * gx + c * gy)
        p0_clear = clearance(p0[0], p0[1], pose)
        out: list[Macro] = []
        for contact in self.contacts:
            if allow is not None and not allow(contact):
                continue
            cx, cy, nx, ny = contact_world(contact, pose)
            start = self._continuation(p0, p0_clear, cx, cy, nx, ny, gap)
            if start is None:
                q = (cx + nx * (r + gap), cy + ny * (r + gap))
                need = r + cfg.clearance_margin
                for length in cfg.entry_lengths:  # shortest straight entry reachable directly
                    entry = (q[0] + nx * length, q[1] + ny * length)
                    if segment_clear(p0, entry, pose, need):
                        path = [p0, entry]
                        break
                else:
                    path = approach_path(p0, entry, pose, cog, cfg.detour_radius, need)
                approach = profile([*path, q], cfg.approach_speed, cfg.accel, 0.0, v_push)
                if pause:
                    approach = [quantise(*p0)] * pause + approach
                start_depth = -gap
                world = self._begin(snap, fresh)
                self._run(world, approach, check=False)
                after, after_fresh, v0 = world.snapshot(), None, v_push
            else:
                q, start_depth = start
                approach, after, after_fresh, v0 = [], snap, fresh, 0.0
            for depth in depths:
                if depth <= start_depth + 0.25:
                    continue
                d = depth - start_depth
                end = quantise(q[0] - nx * d, q[1] - ny * d)
                push = profile([q, end], v_push, cfg.accel, v0, 0.0) + [end] * hold
                if cfg.retreat_steps:  # back off the face: no live contact when the next plan starts
                    push += [
                        quantise(end[0] + nx * cfg.retreat, end[1] + ny * cfg.retreat)
                    ] * cfg.retreat_steps
                world = self._begin(after, after_fresh)
                n_done = self._run(world, push, check=True)
                n_done = None if n_done is None else len(approach) + n_done
                out.append(self._finish(world, approach + push, len(approach), n_done))
        return out

    def _continuation(
        self, p0: Point, p0_clear: float, cx: float, cy: float, nx: float, ny: float, gap: float
    ) -> tuple[Point, float] | None:
        """If the pusher already sits on this contact's push line (after a push), push on from there.

        Returns the push start and its depth past the face, or None when an approach is needed.
        """
        if p0_clear > AGENT_RADIUS + gap + 1.0:
            return None
        rx, ry = p0[0] - cx, p0[1] - cy
        along = rx * nx + ry * ny
        lateral = abs(rx * ny - ry * nx)
        if lateral > 0.5 * self.cfg.contact_spacing:
            return None
        if not AGENT_RADIUS - 8.0 <= along <= AGENT_RADIUS + gap + 1.0:
            return None
        # push from p0 along -n: the line through p0 parallel to the normal
        return p0, AGENT_RADIUS - along

    # ------------------------------------------------------------------------------------------
    def choose(
        self,
        snap: PhysicsSnapshot,
        p0: Point,
        error: float,
        fresh: Callable[[], PushTWorld] | None = None,
        allow: Callable[[Contact], bool] | None = None,
        pause: int = 0,
        pick: Callable[[list[Macro], float, float], Macro] | None = None,
    ) -> Macro:
        """The first macro of the best one- or two-macro plan from ``snap`` (``fresh``: see `expand`).

        Multimodal hooks (`envs/expert_multimodal.py`), all off by default: ``allow`` restricts the
        contacts (when some allowed macro makes progress), ``pause`` delays approaches, and in coarse
        mode ``pick(ranked, error, coarse_rate_offset)`` chooses among the ranked macros.
        """
        cfg = self.cfg
        fine = error < cfg.fine_threshold
        cands = self.expand(snap, p0, fine, fresh, allow, pause)
        if allow is not None and not any(m.success or m.error < error for m in cands):
            cands = self.expand(snap, p0, fine, fresh, None, pause)
        for m in cands:
            m.score = self._score(m, len(m.targets))
            if not fine and not m.success and cfg.coarse_rate_offset > 0:  # progress per step
                m.score = -(error - m.error) / (len(m.targets) + cfg.coarse_rate_offset)
        cands.sort(key=lambda m: m.score)
        best, best_score = cands[0], cands[0].score
        if pick is not None and not fine:
            return pick(cands, error, cfg.coarse_rate_offset)
        if best.success or cfg.beam_width == 0 or not fine:
            return best
        for m in cands[: cfg.beam_width]:
            for m2 in self.expand(m.end, m.targets[-1], m.error < cfg.fine_threshold):
                score = self._score(m2, len(m.targets) + len(m2.targets))
                if score < best_score:
                    best, best_score = m, score
        return best

    def _score(self, last: Macro, n_steps: int) -> float:
        """Score of a plan of ``n_steps`` steps ending with macro ``last`` (lower is better)."""
        if last.success:
            return self.cfg.step_price * n_steps - self.cfg.success_bonus
        return last.error + self.cfg.step_price * n_steps
