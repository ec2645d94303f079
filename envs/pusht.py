"""The PushT task as a Gymnasium environment, faithful to the reference (diffusion_policy / gym-pusht).

No hydra, no torch imports.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .geometry import (
    GOAL_POSE,
    SUCCESS_THRESHOLD,
    WORLD_SIZE,
    corners_world,
    coverage,
    keypoints_world,
    reward_from_coverage,
)
from .initial_states import sample_initial_state
from .physics import BLOCK_COG, CONTROL_HZ, PushTWorld, contacts_per_substep
from .render import draw_action_marker, render_scene

ObsType = Literal["state", "keypoints", "environment_state_agent_pos", "pixels", "pixels_agent_pos"]
OBS_TYPES: tuple[str, ...] = (
    "state",
    "keypoints",
    "environment_state_agent_pos",
    "pixels",
    "pixels_agent_pos",
)
_RESET_OPTION_KEYS = frozenset({"reset_to_state", "legacy"})

# Bounds of block coordinates (origin, keypoints, corners). The pusher (always inside [0, 512]^2, see
# `step`) can squeeze the block through a wall, so the walls do not bound it; but the block only moves
# while touching the pusher, every T point lies within 142 px of any other, and a legacy reset moves
# the origin at most 90 px from a requested origin in [0, 512]. So every block point stays inside
# [-256, 768] with margin.
BLOCK_COORD_LOW, BLOCK_COORD_HIGH = -256.0, 768.0
# Largest |angle| a reset accepts. The observation reports `angle % (2 pi)` (a float 2 pi, 2.4e-16 off the
# real one per turn) while pymunk rotates by the angle itself; up to 10^4 turns the two agree to ~1e-12 rad.
MAX_RESET_ANGLE = 2 * math.pi * 1e4


class PushTEnv(gym.Env):
    """Push a T-shaped block onto a fixed goal pose with a circular pusher.

    ## Description
    A 512 x 512 px top-down world (y points down). A kinematic disc (radius 15) tracks the commanded
    target with a PD law (k_p 100, k_v 20) inside each of 10 physics substeps (100 Hz physics, 10 Hz
    control). The T (two boxes, mass 1, centre of gravity (0, 45), moment 3000) is frictionless and
    quasi-static (space damping 0): it moves only while pushed. Walls stop the block, not the pusher.

    ## Action Space
    ``Box(0, 512, (2,), float32)``: the absolute target position (x, y) of the pusher in pixels.
    Targets outside the box are clipped to it (the pusher's workspace). A NaN, infinite or misshaped
    action raises ``ValueError`` and leaves the state unchanged.

    ## Observation Space (``obs_type``)
    - ``state`` (5,) float64: agent x, y, block-origin x, y, block angle mod 2 pi.
    - ``keypoints`` (20,) float64: the reference's 9 block keypoints (x, y) in world px, then agent x, y
      (diffusion_policy's low-dim PushT observation, without the visibility mask).
    - ``environment_state_agent_pos``: dict ``environment_state`` (16,) = the 8 box corners (bar then
      stem) in world px, ``agent_pos`` (2,).
    - ``pixels`` (H, W, 3) uint8 (default 96 x 96); ``pixels_agent_pos``: dict ``pixels``, ``agent_pos``.
    Images never contain the action marker.

    ## Rewards
    ``clip(coverage / 0.95, 0, 1)`` where coverage = area(goal T intersect block T) / area(goal T),
    computed exactly with shapely.

    ## Success Criteria and Episode End
    Success and ``terminated`` when coverage > 0.95. The 300-step limit comes from registration
    (``TimeLimit`` sets ``truncated``).

    ## Starting State and Reset Arguments
    ``reset(seed=s)`` draws ``[agent x, agent y, block x, block y, angle]`` from ``self.np_random`` with
    the reference sampler's distribution (integers in [50, 450) for the agent, [100, 400) for the
    block, angle ``N(0,1) * 2 pi - pi``). ``options={"reset_to_state": [ax, ay, bx, by, theta]}`` sets a
    state with the reference's legacy order (position, then angle about the centre of gravity), then
    one physics step, exactly as the reference; add ``"legacy": False`` to set the angle first so the
    block origin lands exactly on (bx, by). For the reference's published starts (test seeds
    100000...) use ``reference_initial_state(seed)`` as ``reset_to_state``.

    ## Info
    ``pos_agent``, ``vel_agent``, ``block_pose`` (x, y, raw angle), ``goal_pose``, ``n_contacts``
    (contact points per substep, rounded up), ``is_success``, ``coverage``.

    ## Arguments
    ``gym.make("parapolicy/PushT-v0", obs_type="state", render_mode="rgb_array",
    observation_width=96, observation_height=96, visualization_width=680, visualization_height=680,
    block_cog=(0, 45), damping=0.0)``

    ## Version History
    - v0: initial version, reference physics and reward.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}

    def __init__(
        self,
        obs_type: ObsType = "state",
        render_mode: str | None = "rgb_array",
        observation_width: int = 96,
        observation_height: int = 96,
        visualization_width: int = 680,
        visualization_height: int = 680,
        block_cog: tuple[float, float] = BLOCK_COG,
        damping: float = 0.0,
    ) -> None:
        if obs_type not in OBS_TYPES:
            raise ValueError(f"obs_type must be one of {OBS_TYPES}, got {obs_type!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}"
            )
        for name, value in (
            ("observation_width", observation_width),
            ("observation_height", observation_height),
            ("visualization_width", visualization_width),
            ("visualization_height", visualization_height),
        ):
            if not isinstance(value, int) or value < 8:
                raise ValueError(f"{name} must be an integer >= 8, got {value!r}")
        if observation_width != observation_height or visualization_width != visualization_height:
            raise ValueError("rendered images must be square (width == height)")
        self.obs_type = obs_type
        self.render_mode = render_mode
        self.observation_size = observation_width
        self.visualization_size = visualization_width
        self.block_cog = (float(block_cog[0]), float(block_cog[1]))
        self.damping = float(damping)

        self.action_space = spaces.Box(0.0, WORLD_SIZE, shape=(2,), dtype=np.float32)
        self.observation_space = self._make_observation_space()
        self._world: PushTWorld | None = None
        self._last_action: np.ndarray | None = None

    # ----------------------------------------------------------------------------------------------
    # spaces and observations
    def _make_observation_space(self) -> spaces.Space:
        agent = spaces.Box(0.0, WORLD_SIZE, shape=(2,), dtype=np.float64)
        pixels = spaces.Box(0, 255, shape=(self.observation_size, self.observation_size, 3), dtype=np.uint8)
        lo, hi = BLOCK_COORD_LOW, BLOCK_COORD_HIGH
        if self.obs_type == "state":
            return spaces.Box(
                np.array([0.0, 0.0, lo, lo, 0.0]),
                np.array([WORLD_SIZE, WORLD_SIZE, hi, hi, 2 * math.pi]),
                dtype=np.float64,
            )
        if self.obs_type == "keypoints":
            return spaces.Box(
                np.array([lo] * 18 + [0.0, 0.0]), np.array([hi] * 18 + [WORLD_SIZE] * 2), dtype=np.float64
            )
        if self.obs_type == "environment_state_agent_pos":
            return spaces.Dict(
                {"environment_state": spaces.Box(lo, hi, shape=(16,), dtype=np.float64), "agent_pos": agent}
            )
        if self.obs_type == "pixels":
            return pixels
        return spaces.Dict({"pixels": pixels, "agent_pos": agent})

    @property
    def world(self) -> PushTWorld:
        """The pymunk world of the current episode (after `reset`)."""
        if self._world is None:
            raise RuntimeError("call reset() before using the environment")
        return self._world

    def _get_obs(self) -> Any:
        world = self.world
        agent = world.agent_position
        pose = world.block_pose
        if self.obs_type == "state":
            return np.array([agent[0], agent[1], pose[0], pose[1], pose[2] % (2 * math.pi)])
        if self.obs_type == "keypoints":
            return np.concatenate([keypoints_world(pose).reshape(18), agent])
        if self.obs_type == "environment_state_agent_pos":
            return {"environment_state": corners_world(pose).reshape(16), "agent_pos": agent}
        pixels = render_scene(agent, pose, self.observation_size)
        if self.obs_type == "pixels":
            return pixels
        return {"pixels": pixels, "agent_pos": agent}

    def _get_info(self, n_contacts: int, cov: float) -> dict[str, Any]:
        world = self.world
        return {
            "pos_agent": world.agent_position,
            "vel_agent": world.agent_velocity,
            "block_pose": world.block_pose,
            "goal_pose": GOAL_POSE.copy(),
            "n_contacts": n_contacts,
            "is_success": cov > SUCCESS_THRESHOLD,
            "coverage": cov,
        }

    # ----------------------------------------------------------------------------------------------
    # gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        """Start an episode; see the class docstring for ``options``."""
        state, legacy = self._parse_reset_options(options)  # validate before touching any state
        super().reset(seed=seed)
        if state is None:
            state = sample_initial_state(self.np_random)
        world = PushTWorld(block_cog=self.block_cog, damping=self.damping)
        world.set_state(state, legacy=legacy)
        self._world = world
        self._last_action = None
        return self._get_obs(), self._get_info(0, coverage(world.block_pose))

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        """Track the target ``action`` for one control step (10 physics substeps)."""
        world = self.world
        target = validate_action(action)
        n_points = world.step_control(target)
        self._last_action = target
        cov = coverage(world.block_pose)
        terminated = cov > SUCCESS_THRESHOLD
        return (
            self._get_obs(),
            reward_from_coverage(cov),
            terminated,
            False,
            self._get_info(contacts_per_substep(n_points), cov),
        )

    def render(self) -> np.ndarray | None:
        """An RGB frame (visualisation size) with the last commanded target marked."""
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; pass render_mode='rgb_array'")
            return None
        world = self.world
        frame = render_scene(world.agent_position, world.block_pose, self.visualization_size)
        if frame.base is None and self.visualization_size == int(WORLD_SIZE):
            frame = frame.copy()
        if self._last_action is not None:
            draw_action_marker(frame, self._last_action)
        return frame

    @staticmethod
    def _parse_reset_options(options: dict[str, Any] | None) -> tuple[np.ndarray | None, bool]:
        if options is None:
            return None, True
        if not isinstance(options, dict):
            raise TypeError(f"options must be a dict, got {type(options).__name__}")
        unknown = set(options) - _RESET_OPTION_KEYS
        if unknown:
            raise ValueError(
                f"unknown reset option(s) {sorted(unknown)}; allowed: {sorted(_RESET_OPTION_KEYS)}"
            )
        legacy = options.get("legacy", True)
        if not isinstance(legacy, bool):
            raise ValueError(f"reset option 'legacy' must be a bool, got {legacy!r}")
        if options.get("reset_to_state") is None:
            return None, legacy
        return validate_reset_state(options["reset_to_state"]), legacy


def validate_action(action: Any) -> np.ndarray:
    """Check an action and return it as a float64 ``(2,)`` target clipped to the workspace.

    Raises:
        ValueError: if the action is not a 2-vector of finite numbers.
    """
    try:
        arr = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"action must be a numeric (x, y) target, got {action!r}") from exc
    if arr.shape != (2,):
        raise ValueError(f"action must have shape (2,) (absolute x, y target), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"action must be finite, got {arr.tolist()}")
    return np.clip(arr, 0.0, WORLD_SIZE)


def validate_reset_state(state: Any) -> np.ndarray:
    """Check a ``reset_to_state`` vector ``[agent_x, agent_y, block_x, block_y, block_angle]``.

    Raises:
        ValueError: if it is not 5 finite numbers with positions inside the 512 x 512 world and an angle
            of at most ``MAX_RESET_ANGLE`` in magnitude.
    """
    try:
        arr = np.asarray(state, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"reset_to_state must be 5 numbers [ax, ay, bx, by, theta], got {state!r}") from exc
    if arr.shape != (5,):
        raise ValueError(
            f"reset_to_state must have shape (5,) [ax, ay, bx, by, theta], got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"reset_to_state must be finite, got {arr.tolist()}")
    if np.any(arr[:4] < 0.0) or np.any(arr[:4] > WORLD_SIZE):
        raise ValueError(f"reset_to_state positions must lie in [0, {WORLD_SIZE:g}], got {arr[:4].tolist()}")
    if abs(arr[4]) > MAX_RESET_ANGLE:
        raise ValueError(
            f"reset_to_state angle {float(arr[4])!r} rad is not representable: beyond "
            f"+-{MAX_RESET_ANGLE:.0f} rad (10^4 turns) the observation's angle mod 2 pi drifts from the "
            "physics' rotation; wrap it first"
        )
    return arr
