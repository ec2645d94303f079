"""The PushT physics world on pymunk: walls, kinematic pusher with PD tracking, the T block.

Every number is the reference task's (reference brief sections 1.1-1.3), quirks included:
no gravity, space damping 0 (the block is quasi-static: its velocity is wiped every substep),
zero friction and elasticity on every shape, T mass 1 with centre of gravity (0, 45) and moment
3000, 10 physics substeps of 0.01 s per 10 Hz control step with the PD law applied inside each.

All pymunk calls live here, so pymunk version differences stay local: pymunk 7 replaced
``Space.add_collision_handler`` with ``Space.on_collision``; both are supported.
No gymnasium imports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pymunk

from .geometry import BAR_VERTICES, GOAL_POSE, STEM_VERTICES

SIM_HZ = 100
CONTROL_HZ = 10
SIM_DT = 1.0 / SIM_HZ
N_SUBSTEPS = SIM_HZ // CONTROL_HZ
K_P = 100.0
K_V = 20.0
AGENT_RADIUS = 15.0
AGENT_SPAWN = (256.0, 400.0)
BLOCK_SPAWN = (256.0, 300.0, 0.0)
BLOCK_MASS = 1.0
BLOCK_MOMENT = 3000.0  # the reference sums the bar's moment twice (1500 + 1500)
BLOCK_COG = (0.0, 45.0)  # unweighted mean of the two part centroids (0, 15) and (0, 75)
WALL_RADIUS = 2.0
WALL_SEGMENTS = (
    ((5.0, 506.0), (5.0, 5.0)),
    ((5.0, 5.0), (506.0, 5.0)),
    ((506.0, 5.0), (506.0, 506.0)),
    ((5.0, 506.0), (506.0, 506.0)),
)


@dataclass(frozen=True)
class PhysicsSnapshot:
    """Everything that determines the future of the world: restore it to branch a simulation."""

    agent_position: tuple[float, float]
    agent_velocity: tuple[float, float]
    block_position: tuple[float, float]
    block_angle: float
    block_velocity: tuple[float, float]
    block_angular_velocity: float


class PushTWorld:
    """The pymunk space of one PushT episode.

    Args:
        block_cog: the block's centre of gravity in its local frame (reference quirk: (0, 45)).
        damping: pymunk space damping (fraction of velocity kept per second; reference: 0).
    """

    def __init__(self, block_cog: tuple[float, float] = BLOCK_COG, damping: float = 0.0) -> None:
        self.space = pymunk.Space()
        self.space.gravity = (0.0, 0.0)
        self.space.damping = damping
        for a, b in WALL_SEGMENTS:
            wall = pymunk.Segment(self.space.static_body, a, b, WALL_RADIUS)
            self.space.add(wall)

        self.agent = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
        self.agent.position = AGENT_SPAWN
        self.space.add(self.agent, pymunk.Circle(self.agent, AGENT_RADIUS))

        self.block = pymunk.Body(BLOCK_MASS, BLOCK_MOMENT)
        bar = pymunk.Poly(self.block, [tuple(v) for v in BAR_VERTICES])
        stem = pymunk.Poly(self.block, [tuple(v) for v in STEM_VERTICES])
        self.block.center_of_gravity = block_cog
        self.block.position = BLOCK_SPAWN[:2]
        self.block.angle = BLOCK_SPAWN[2]
        self.space.add(self.block, bar, stem)
        # Friction and elasticity stay at pymunk's default 0 on every shape (reference quirk: the
        # reference sets `friction` on the bodies, which pymunk ignores).

        self.n_contact_points = 0
        self._add_contact_counter()

    def _add_contact_counter(self) -> None:
        def post_solve(arbiter: pymunk.Arbiter, space: pymunk.Space, data: object) -> None:
            self.n_contact_points += len(arbiter.contact_point_set.points)

        if hasattr(self.space, "on_collision"):  # pymunk >= 7
            self.space.on_collision(0, 0, post_solve=post_solve)
        else:  # pymunk 6
            self.space.add_collision_handler(0, 0).post_solve = post_solve

    # ----------------------------------------------------------------------------------------------
    # state
    def set_state(self, state: np.ndarray, legacy: bool = True) -> None:
        """Place agent and block from ``[agent_x, agent_y, block_x, block_y, block_angle]``.

        ``legacy=True`` applies the reference's legacy order (position, then angle: pymunk rotates
        about the centre of gravity, so the block origin moves); ``legacy=False`` sets the angle first
        so the origin lands exactly on the requested point. Either way one physics step follows,
        exactly as the reference does.
        """
        self.agent.position = (float(state[0]), float(state[1]))
        if legacy:
            self.block.position = (float(state[2]), float(state[3]))
            self.block.angle = float(state[4])
        else:
            self.block.angle = float(state[4])
            self.block.position = (float(state[2]), float(state[3]))
        self.space.step(SIM_DT)

    def snapshot(self) -> PhysicsSnapshot:
        """Capture the dynamic state (cheap: a few floats)."""
        return PhysicsSnapshot(
            tuple(self.agent.position),
            tuple(self.agent.velocity),
            tuple(self.block.position),
            self.block.angle,
            tuple(self.block.velocity),
            self.block.angular_velocity,
        )

    def restore(self, snap: PhysicsSnapshot) -> None:
        """Restore a snapshot. The block's angle is set BEFORE its position (else it moves)."""
        self.agent.position = snap.agent_position
        self.agent.velocity = snap.agent_velocity
        self.block.angle = snap.block_angle
        self.block.position = snap.block_position
        self.block.velocity = snap.block_velocity
        self.block.angular_velocity = snap.block_angular_velocity

    @property
    def block_pose(self) -> np.ndarray:
        """``(3,)`` block origin x, y and raw (unwrapped) angle."""
        x, y = self.block.position
        return np.array([x, y, self.block.angle])

    @property
    def agent_position(self) -> np.ndarray:
        """``(2,)`` pusher position."""
        return np.array(tuple(self.agent.position))

    @property
    def agent_velocity(self) -> np.ndarray:
        """``(2,)`` pusher velocity in px/s."""
        return np.array(tuple(self.agent.velocity))

    # ----------------------------------------------------------------------------------------------
    # dynamics
    def step_control(self, target: tuple[float, float]) -> int:
        """Advance one control step (10 substeps) with the PD law tracking ``target``.

        Returns:
            The number of contact points summed over the substeps.
        """
        tx, ty = float(target[0]), float(target[1])
        agent = self.agent
        self.n_contact_points = 0
        for _ in range(N_SUBSTEPS):
            agent.velocity = pd_velocity(agent.position, agent.velocity, (tx, ty))
            self.space.step(SIM_DT)  # the kinematic pusher moves by velocity x SIM_DT, whatever it hits
        return self.n_contact_points


def pd_velocity(
    position: tuple[float, float], velocity: tuple[float, float], target: tuple[float, float]
) -> tuple[float, float]:
    """The pusher's velocity after one substep of the PD law (the one place it is written).

    acc = k_p (target - pos) + k_v (0 - vel); vel += acc dt (semi-implicit Euler; the position then
    moves by the new velocity x SIM_DT).
    """
    (px, py), (vx, vy), (tx, ty) = position, velocity, target
    return (vx + (K_P * (tx - px) - K_V * vx) * SIM_DT, vy + (K_P * (ty - py) - K_V * vy) * SIM_DT)


def forecast_pusher(position: np.ndarray, velocity: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Where the pusher will be after each of ``targets`` (one control step each), from its own state.

    The pusher is kinematic: contacts never move it, so its path is its PD law alone and this equals
    what `PushTWorld.step_control` does to it, whatever the block does.

    Args:
        position: (2,) the pusher's position now.
        velocity: (2,) its velocity now (px/s).
        targets: (n, 2) the targets of the next n control steps.

    Returns:
        (n, 2) its position after each control step.
    """
    p = (float(position[0]), float(position[1]))
    v = (float(velocity[0]), float(velocity[1]))
    out = np.empty((len(targets), 2))
    for i, target in enumerate(targets):
        tx, ty = float(target[0]), float(target[1])
        for _ in range(N_SUBSTEPS):
            v = pd_velocity(p, v, (tx, ty))
            p = (p[0] + v[0] * SIM_DT, p[1] + v[1] * SIM_DT)
        out[i] = p
    return out


def contacts_per_substep(n_contact_points: int) -> int:
    """The reference's scaled contact count: ``ceil(contact points / substeps)``."""
    return math.ceil(n_contact_points / N_SUBSTEPS)


__all__ = [
    "GOAL_POSE",
    "PhysicsSnapshot",
    "PushTWorld",
    "contacts_per_substep",
    "forecast_pusher",
    "pd_velocity",
]
