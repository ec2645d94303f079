"""A planning expert for PushT that needs no human: demonstrations for imitation learning.

The expert is a hybrid macro planner (see ``expert_search``): from the current state it simulates, on its
own copy of the physics, every "approach a contact point, push D px along its normal, hold" macro and
executes the best one: far from the goal the one removing the most pose error per step, near it the first
macro of the best two-macro plan. Then it replans from the real state.
The private world is restored from a snapshot of the real one (angle before position), so predictions
match the env (bit for bit unless the block is being pressed against a wall: pymunk's solver state is not
part of a snapshot; then within 0.03 px). The targets it issues are smooth open-loop segments, not noisy
corrections: 10 Hz absolute targets that move at most ``approach_speed`` px per step.

Typical use (one expert per worker process; everything is deterministic given the seed)::

    record = run_expert_episode(seed=0, cfg=ExpertConfig())
    record.success, record.n_steps, record.data["action"].shape   # True, N, (N, 2)

or closed loop in your own env::

    expert = PushTExpert(ExpertConfig())
    obs, info = env.reset(options={"reset_to_state": reference_initial_state(seed)})
    expert.reset(env)
    while not done:
        obs, reward, terminated, truncated, info = env.step(expert.act(env))
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import pymunk

from . import ENV_ID
from .expert_multimodal import EpisodeStrategy, MultimodalConfig
from .expert_paths import Point, make_contacts, quantise
from .expert_search import MacroSearch, pose_error
from .geometry import coverage, keypoints_world
from .initial_states import reference_initial_state
from .physics import PhysicsSnapshot, PushTWorld
from .render import render_scene

RECORD_KEYS = ("state", "keypoint", "action", "n_contacts", "img")
DEFAULT_RECORD_KEYS = ("state", "keypoint", "action", "n_contacts")
_ROW_SHAPES = {"state": (5,), "keypoint": (9, 2), "action": (2,), "n_contacts": (1,), "img": (96, 96, 3)}
MAX_TARGET_JUMP = 50.0  # px per step: the hard limit on |a_t - a_{t-1}| the speeds must respect
EXPERT_MODES = ("planner", "multimodal")


@dataclass
class ExpertConfig:
    """Knobs of the planning expert (lengths in px, speeds in px per 10 Hz control step).

    A plain (not frozen) dataclass so that it can be a Hydra/OmegaConf schema; sequences may be given as
    lists and are stored as tuples. Validated on construction.
    """

    contact_spacing: float = 10.0
    """Spacing of the contact candidates along the T's faces."""
    concave_margin: float = 18.0
    """No face contacts this close to the T's two concave corners (the pusher only grazes there)."""
    corner_normals: int = 3
    """Push directions tried at each convex corner, spread inside its normal cone (0: none)."""
    detour_radius: float = 120.0
    """Radius around the block's centre of gravity of the collision-free detour circle."""
    clearance_margin: float = 10.0
    """Extra clearance (beyond the pusher radius) that a direct approach segment must keep."""
    entry_lengths: tuple[float, ...] = (10.0, 20.0, 40.0)
    """The approach ends with a straight run along the contact normal: the first of these lengths whose
    start the pusher can reach in a straight line, else the last one after a detour."""
    approach_speed: float = 25.0
    """Top speed of the target while approaching (also the largest target jump)."""
    accel: float = 8.0
    """Largest change of target speed per step (speeds ramp up and down)."""
    coarse_push_speed: float = 15.0
    fine_push_speed: float = 4.0
    coarse_gap: float = 6.0
    """Distance from the face at which the approach ends (coarse / fine mode)."""
    fine_gap: float = 4.0
    coarse_depths: tuple[float, ...] = (3.0, 8.0, 16.0, 30.0, 50.0, 80.0, 120.0)
    """Push depths past the face tried per contact (coarse mode)."""
    fine_depths: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, 5.0, 8.0)
    """Push depths tried per contact (fine mode)."""
    coarse_hold_steps: int = 2
    """Steps the target rests at the push end (the block stops when the pusher does)."""
    fine_hold_steps: int = 2
    retreat: float = 3.0
    retreat_steps: int = 1
    """After the hold the target backs off ``retreat`` px along the normal for ``retreat_steps`` steps, so
    that no contact is live when the next plan starts (pymunk's cached contact impulses cannot be
    snapshotted; without a live contact the planner's prediction is bit-exact)."""
    fine_threshold: float = 12.0
    """Pose error (RMS px over the T's area) below which the fine mode (and the 2-macro beam) is used."""
    step_price: float = 0.02
    """Score price per control step of a plan (px of pose error)."""
    coarse_rate_offset: float = 10.0
    """Coarse mode scores a macro by its progress rate, error decrease / (steps + this); 0: like fine
    mode (remaining error + ``step_price`` per step)."""
    success_bonus: float = 100.0
    """Score bonus of a plan that reaches success (such plans then compete on length only)."""
    success_gate: float = 3.0
    """Pose error below which a simulated state is checked for success with the exact coverage."""
    beam_width: int = 5
    """Macros expanded a second time in fine mode (0: one-macro lookahead only)."""
    mode: str = "planner"
    """``planner``: deterministic, one way of solving each start state (the shipped dataset).
    ``multimodal``: each episode draws a pushing side, macro choices, speeds, detours and pauses from
    its strategy seed (`envs/expert_multimodal.py`)."""
    multimodal: MultimodalConfig = field(default_factory=MultimodalConfig)
    """Settings of the multimodal mode."""

    def __post_init__(self) -> None:
        if self.mode not in EXPERT_MODES:
            raise ValueError(f"mode must be one of {EXPERT_MODES}, got {self.mode!r}")
        if isinstance(self.multimodal, dict):  # e.g. a plain mapping from a config file
            self.multimodal = MultimodalConfig(**self.multimodal)
        if not isinstance(self.multimodal, MultimodalConfig):
            raise ValueError(f"multimodal must be a MultimodalConfig, got {type(self.multimodal).__name__}")
        positive = (
            "contact_spacing",
            "detour_radius",
            "approach_speed",
            "accel",
            "coarse_push_speed",
            "fine_push_speed",
            "fine_threshold",
            "success_gate",
        )
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        non_negative = (
            "coarse_rate_offset",
            "concave_margin",
            "clearance_margin",
            "coarse_gap",
            "fine_gap",
            "step_price",
            "success_bonus",
            "retreat",
        )
        for name in non_negative:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in (
            "corner_normals",
            "coarse_hold_steps",
            "fine_hold_steps",
            "beam_width",
            "retreat_steps",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("approach_speed", "coarse_push_speed", "fine_push_speed"):
            if getattr(self, name) > MAX_TARGET_JUMP:
                raise ValueError(f"{name} must be <= {MAX_TARGET_JUMP} px/step, got {getattr(self, name)}")
        if self.contact_spacing > 60:
            raise ValueError(f"contact_spacing must be <= 60 px, got {self.contact_spacing}")
        if self.detour_radius < 95:
            raise ValueError(
                f"detour_radius must be >= 95 px (block reach 77 + pusher 15), got {self.detour_radius}"
            )
        for name in ("coarse_depths", "fine_depths", "entry_lengths"):
            values = getattr(self, name)
            if isinstance(values, str) or not isinstance(values, Sequence) or not values:
                raise ValueError(f"{name} must be a non-empty sequence, got {values!r}")
            if any(isinstance(d, bool) or not (isinstance(d, int | float) and 0 < d <= 200) for d in values):
                raise ValueError(f"{name} must hold lengths in (0, 200] px, got {values!r}")
            setattr(self, name, tuple(float(d) for d in values))


def _private_world(block_cog: tuple[float, float], damping: float) -> PushTWorld:
    """A world for planning, minus the Python contact counter (a post-solve callback per contact:
    ~15 % of the planner's time; it never changes the physics)."""
    private = PushTWorld(block_cog=block_cog, damping=damping)
    empty = getattr(pymunk, "empty_callback", None)
    if empty is not None and hasattr(private.space, "on_collision"):  # pymunk >= 7
        private.space.on_collision(0, 0, post_solve=empty)
    return private


class _ResetReplica:
    """Rebuilds the env's world exactly as its reset did (same construction, same set-state step), so
    its pymunk contact cache matches too. Picklable."""

    def __init__(self, params: tuple[tuple[float, float], float], state: np.ndarray, legacy: bool) -> None:
        self.params, self.state, self.legacy = params, np.array(state, dtype=np.float64), legacy

    def __call__(self) -> PushTWorld:
        replica = _private_world(*self.params)
        replica.set_state(self.state, legacy=self.legacy)
        return replica


def _world_of(world_or_env: Any) -> PushTWorld:
    if isinstance(world_or_env, PushTWorld):
        return world_or_env
    env = getattr(world_or_env, "unwrapped", world_or_env)
    world = getattr(env, "world", None)
    if not isinstance(world, PushTWorld):
        raise TypeError(f"expected a PushTWorld or a PushT env, got {type(world_or_env).__name__}")
    return world


class PushTExpert:
    """Closed-loop planning expert: ``reset(world)`` at the episode start, then ``act(world)`` every step.

    ``world`` is the real env's `PushTWorld` or the env itself (``env.unwrapped.world`` is used); it is only
    read (snapshot). The expert plans on its own private world. Picklable; a copy must be reset to act.
    Per-episode diagnostics: ``n_plans``, ``sim_steps`` and ``max_prediction_error`` (largest gap, px,
    between a macro's predicted and real final block position).
    """

    def __init__(self, cfg: ExpertConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else ExpertConfig()
        self._contacts = make_contacts(
            self.cfg.contact_spacing, self.cfg.concave_margin, self.cfg.corner_normals
        )
        self._search: MacroSearch | None = None
        self._queue: list[Point] = []
        self._last: Point | None = None
        self._expected: PhysicsSnapshot | None = None
        self._replica: _ResetReplica | None = None
        self.strategy: EpisodeStrategy | None = None
        """The episode's random choices (multimodal mode only)."""
        self.n_plans = 0
        self.max_prediction_error = 0.0

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_search"] = None  # pymunk spaces with callbacks do not pickle; rebuilt on reset
        return state

    def reset(
        self,
        world_or_env: Any,
        reset_state: np.ndarray | None = None,
        legacy: bool = True,
        strategy_seed: int = 0,
    ) -> None:
        """Start an episode from the world's current state.

        ``reset_state``/``legacy``: the ``reset_to_state`` options the env was just reset with (optional).
        With them the first plan is exact even when the pusher starts inside the block, which depends on
        pymunk's contact cache (not part of a snapshot); without them it may be off by a few px.
        ``strategy_seed``: seeds the episode's strategy in multimodal mode (ignored by the planner mode).
        """
        world = _world_of(world_or_env)
        params = (tuple(world.block.center_of_gravity), world.space.damping)
        self._search = MacroSearch(self.cfg, _private_world(*params), self._contacts)
        self._replica = None
        if reset_state is not None:
            replica = _ResetReplica(params, reset_state, legacy)
            if replica().snapshot() == world.snapshot():  # else the env has stepped since its reset
                self._replica = replica
        ax, ay = world.agent.position
        self._last = (float(ax), float(ay))
        self._queue = []
        self._expected = None
        self.strategy = None
        if self.cfg.mode == "multimodal":
            self.strategy = EpisodeStrategy(self.cfg.multimodal, strategy_seed)
        self.n_plans = 0
        self.max_prediction_error = 0.0

    @property
    def sim_steps(self) -> int:
        """Control steps simulated by the planner this episode."""
        return 0 if self._search is None else self._search.sim_steps

    def act(self, world_or_env: Any) -> np.ndarray:
        """The next absolute target ``(2,)`` float64 (a multiple of 1/256 px, exact in float32)."""
        if self._search is None or self._last is None:
            raise RuntimeError("call reset() before act()")
        if not self._queue:
            self._plan(_world_of(world_or_env))
        target = self._queue.pop(0)
        self._last = target
        return np.array(target, dtype=np.float64)

    def _plan(self, world: PushTWorld) -> None:
        assert self._search is not None and self._last is not None
        snap = world.snapshot()
        if self._expected is not None:
            (ex, ey), (rx, ry) = self._expected.block_position, snap.block_position
            self.max_prediction_error = max(self.max_prediction_error, math.hypot(ex - rx, ey - ry))
        (x, y), th = world.block.position, world.block.angle
        error = pose_error(x, y, th)
        strategy = self.strategy
        if strategy is None:
            macro = self._search.choose(snap, self._last, error, self._replica)
        else:
            self._search.cfg, pause = strategy.decision(self.cfg)
            opening = strategy.opening_left > 0 and error >= self.cfg.fine_threshold
            allow = strategy.allow if opening else None
            macro = self._search.choose(snap, self._last, error, self._replica, allow, pause, strategy.pick)
            strategy.opening_left -= opening
        self._replica = None  # valid for the reset state only
        self._queue = list(macro.targets) or [quantise(*self._last)]
        self._expected = macro.end
        self.n_plans += 1


@dataclass
class EpisodeRecord:
    """One expert episode. ``data[key][t]`` is the pre-step observation and the action of step t.

    Keys: ``state`` (T, 5) float32 agent x, y, block x, y, raw (unwrapped) block angle; ``keypoint``
    (T, 9, 2) float32; ``action`` (T, 2) float32 (exactly the targets sent); ``n_contacts`` (T, 1) float32,
    the contact count of the step that led to the observation (0 at t = 0), as in the reference demos;
    ``img`` (T, 96, 96, 3) uint8 when asked for.
    """

    seed: int
    success: bool
    n_steps: int
    wall_time_s: float
    final_coverage: float
    initial_state: np.ndarray
    """(5,) the env state after reset: agent x, y, block x, y, raw angle."""
    data: dict[str, np.ndarray] = field(default_factory=dict)
    n_plans: int = 0
    sim_steps: int = 0
    max_prediction_error: float = 0.0
    """Largest gap (px) between the planner's predicted and the real block position at a macro's end."""
    strategy_seed: int = 0
    side: str = ""
    """Multimodal mode: the pushing side the episode drew (``left``/``right``); empty for the planner."""

    def action_stats(self) -> dict[str, float]:
        """Target jumps (from the start position of the agent on) and direction reversals."""
        return action_stats(self.data["action"], self.initial_state[:2])


def action_stats(actions: np.ndarray, start: np.ndarray) -> dict[str, float]:
    """``mean_jump``/``max_jump`` of ``|a_t - a_{t-1}|`` with ``a_{-1} = start`` (px), and ``reversals``:
    consecutive moves (both > 1 px) whose directions differ by more than 120 degrees (dithering)."""
    pts = np.concatenate([np.asarray(start, dtype=np.float64)[None], np.asarray(actions, dtype=np.float64)])
    d = np.diff(pts, axis=0)
    jumps = np.linalg.norm(d, axis=1)
    moving = (jumps[1:] > 1.0) & (jumps[:-1] > 1.0)
    cos = np.einsum("ij,ij->i", d[1:], d[:-1]) / np.maximum(jumps[1:] * jumps[:-1], 1e-9)
    return {
        "mean_jump": float(jumps.mean()) if len(jumps) else 0.0,
        "max_jump": float(jumps.max()) if len(jumps) else 0.0,
        "reversals": int(np.sum(moving & (cos < -0.5))),
    }


def run_expert_episode(
    seed: int,
    cfg: ExpertConfig | None = None,
    max_steps: int = 300,
    record_keys: tuple[str, ...] = DEFAULT_RECORD_KEYS,
    expert: PushTExpert | None = None,
    strategy_seed: int | None = None,
) -> EpisodeRecord:
    """Run the expert closed loop in the real env from ``reference_initial_state(seed)``.

    The episode ends at success (the env terminates) or after ``max_steps``. ``action`` is always recorded;
    ``record_keys`` picks the rest from `RECORD_KEYS`. Pass ``expert`` to reuse one (its config wins).
    ``strategy_seed`` (multimodal mode): seeds the strategy; default ``seed``, so a collection is
    deterministic per seed; vary it to run several strategies from one start state.
    """
    unknown = set(record_keys) - set(RECORD_KEYS)
    if unknown:
        raise ValueError(f"unknown record key(s) {sorted(unknown)}; allowed: {RECORD_KEYS}")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")
    start_time = time.perf_counter()
    expert = expert if expert is not None else PushTExpert(cfg)
    keys = set(record_keys) | {"action"}
    env = gym.make(ENV_ID, obs_type="state", disable_env_checker=True, max_episode_steps=max_steps)
    try:
        reset_state = reference_initial_state(seed)
        _, info = env.reset(options={"reset_to_state": reset_state})
        world = env.unwrapped.world
        strategy_seed = int(seed if strategy_seed is None else strategy_seed)
        expert.reset(world, reset_state, strategy_seed=strategy_seed)
        initial = np.concatenate([info["pos_agent"], info["block_pose"]])
        rows: dict[str, list] = {k: [] for k in keys}
        success = False
        for _ in range(max_steps):
            pose = info["block_pose"]
            if "state" in keys:
                rows["state"].append(np.concatenate([info["pos_agent"], pose]))
            if "keypoint" in keys:
                rows["keypoint"].append(keypoints_world(pose))
            if "n_contacts" in keys:
                rows["n_contacts"].append([info["n_contacts"]])
            if "img" in keys:
                rows["img"].append(render_scene(info["pos_agent"], pose, 96))
            action = expert.act(world).astype(np.float32)
            rows["action"].append(action)
            _, _, terminated, truncated, info = env.step(action)
            if terminated:
                success = bool(info["is_success"])
                break
            if truncated:
                break
        final_cov = coverage(info["block_pose"])
    finally:
        env.close()
    data = {
        k: np.asarray(v, dtype=np.uint8 if k == "img" else np.float32).reshape(len(v), *_ROW_SHAPES[k])
        for k, v in rows.items()
    }
    return EpisodeRecord(
        seed=int(seed),
        success=success,
        n_steps=len(rows["action"]),
        wall_time_s=time.perf_counter() - start_time,
        final_coverage=final_cov,
        initial_state=initial,
        data=data,
        n_plans=expert.n_plans,
        sim_steps=expert.sim_steps,
        max_prediction_error=expert.max_prediction_error,
        strategy_seed=strategy_seed,
        side="" if expert.strategy is None else expert.strategy.side,
    )
