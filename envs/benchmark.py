"""Environment speed benchmark: ms per step and per reset, vector-env throughput (no hydra)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from . import ENV_ID
from .pusht import OBS_TYPES


@dataclass
class EnvBenchConfig:
    """Settings of `run_env_benchmark`."""

    obs_types: tuple[str, ...] = ("state", "keypoints", "pixels", "pixels_agent_pos")
    """Observation types to time."""
    n_steps: int = 1000
    """Steps per repeat (random targets; the env is reset when an episode ends)."""
    n_resets: int = 100
    """Resets per repeat."""
    repeats: int = 5
    """Repeats per measurement; medians and min/max are reported."""
    n_vec_envs: int = 8
    """Sub-envs of the vector-env throughput test."""
    vec_steps: int = 300
    """Vector steps per repeat."""
    vec_modes: tuple[str, ...] = ("sync", "async")
    """Vectorisation modes to time."""
    seed: int = 0
    """Seed of the random targets and resets."""

    def __post_init__(self) -> None:
        for name in ("n_steps", "n_resets", "repeats", "n_vec_envs", "vec_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        bad = [m for m in self.vec_modes if m not in ("sync", "async")]
        if bad:
            raise ValueError(f"vec_modes must be 'sync' or 'async', got {bad}")
        unknown = [t for t in self.obs_types if t not in OBS_TYPES]
        if unknown or not self.obs_types:
            raise ValueError(f"obs_types must be names from {OBS_TYPES}, got {list(self.obs_types)}")


def _spread(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def _time_steps(env: gym.Env, n_steps: int, rng: np.random.Generator) -> float:
    actions = rng.uniform(0.0, 512.0, size=(n_steps, 2)).astype(np.float32)
    env.reset(seed=int(rng.integers(1 << 30)))
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return (time.perf_counter() - start) / n_steps * 1e3


def _time_resets(env: gym.Env, n_resets: int, rng: np.random.Generator) -> float:
    seeds = rng.integers(1 << 30, size=n_resets)
    start = time.perf_counter()
    for seed in seeds:
        env.reset(seed=int(seed))
    return (time.perf_counter() - start) / n_resets * 1e3


def run_env_benchmark(cfg: EnvBenchConfig) -> dict:
    """Time the registered env (with its wrappers) and return medians with min/max spread.

    Returns:
        ``{"per_obs_type": {obs_type: {"step_ms": {...}, "reset_ms": {...}}},
        "vector": {mode: {"n_envs", "env_steps_per_s": {...}}}}``.
    """
    rng = np.random.default_rng(cfg.seed)
    result: dict = {"per_obs_type": {}, "vector": {}}
    for obs_type in cfg.obs_types:
        env = gym.make(ENV_ID, obs_type=obs_type)
        _time_steps(env, min(100, cfg.n_steps), rng)  # warm-up
        steps = [_time_steps(env, cfg.n_steps, rng) for _ in range(cfg.repeats)]
        resets = [_time_resets(env, cfg.n_resets, rng) for _ in range(cfg.repeats)]
        env.close()
        result["per_obs_type"][obs_type] = {"step_ms": _spread(steps), "reset_ms": _spread(resets)}
    for mode in cfg.vec_modes:
        vec = gym.make_vec(ENV_ID, num_envs=cfg.n_vec_envs, vectorization_mode=mode)
        try:
            vec.reset(seed=cfg.seed)
            rates = []
            for _ in range(cfg.repeats):
                actions = rng.uniform(0.0, 512.0, size=(cfg.vec_steps, cfg.n_vec_envs, 2)).astype(np.float32)
                start = time.perf_counter()
                for action in actions:
                    vec.step(action)
                rates.append(cfg.vec_steps * cfg.n_vec_envs / (time.perf_counter() - start))
        finally:
            vec.close()
        result["vector"][mode] = {"n_envs": cfg.n_vec_envs, "env_steps_per_s": _spread(rates)}
    return result


def format_env_benchmark(result: dict) -> str:
    """A plain-text table of `run_env_benchmark`'s result."""
    lines = [f"{'obs_type':<18} {'step ms (median [min, max])':<32} {'reset ms (median [min, max])':<32}"]
    for obs_type, r in result["per_obs_type"].items():
        s, t = r["step_ms"], r["reset_ms"]
        lines.append(
            f"{obs_type:<18} {s['median']:>7.3f} [{s['min']:.3f}, {s['max']:.3f}]{'':<10} "
            f"{t['median']:>7.3f} [{t['min']:.3f}, {t['max']:.3f}]"
        )
    for mode, r in result["vector"].items():
        v = r["env_steps_per_s"]
        lines.append(
            f"vector {mode} x{r['n_envs']}: {v['median']:.0f} env steps/s [{v['min']:.0f}, {v['max']:.0f}]"
        )
    return "\n".join(lines)
