"""The reference evaluation protocol: its settings, noise per episode and metrics (no hydra).

The episodes themselves run in the controller's ``frozen`` mode (`rollout.evaluate_policy`).

Episodes start from the task's start state of each seed (PushT: the reference initial-state sampler,
`reference_initial_state(seed)`, legacy set order; see `tasks/`), seeds ``start_seed .. start_seed +
n_episodes - 1`` (reference test seeds: 100000...). Up to ``batch_size`` episodes run in lockstep so
that one network call plans for all of them; each episode has its own noise generator seeded from
(noise_seed, episode seed), so results do not depend on the batch size or on which episodes share a
batch. As the reference's MultiStepWrapper: the first observation is repeated to fill the To-step
history, a chunk of Ta actions is executed one by one and stops early when the episode ends, and an
episode ends at success or after ``max_steps`` steps.
Metrics: ``mean_score`` (the reference's headline: mean over episodes of the max reward), success rate
with a Wilson 95% interval, steps and final coverage; two runs over the same seeds compare paired
(`paired_difference`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class EvalConfig:
    """Settings of `evaluate_policy`."""

    n_episodes: int = 50
    """Episodes, one per seed."""
    start_seed: int = 100000
    """First reference initial-state seed (100000: the reference test seeds)."""
    batch_size: int = 50
    """Episodes stepped in lockstep (one batched network call per replanning)."""
    max_steps: int = 300
    """Control steps per episode at most (reference: 300)."""
    max_videos: int = 4
    """MP4s of the first episodes (0 for none)."""
    video_size: int = 256
    """Side of the video frames in pixels (even)."""
    noise_seed: int = 0
    """Seed of the per-episode sampling-noise generators."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        for name in ("n_episodes", "batch_size", "max_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"eval.{name} must be >= 1, got {getattr(self, name)}")
        if self.start_seed < 0 or self.noise_seed < 0:
            raise ValueError("eval.start_seed and eval.noise_seed must be >= 0")
        if self.max_videos < 0:
            raise ValueError(f"eval.max_videos must be >= 0, got {self.max_videos}")
        if self.video_size < 16 or self.video_size % 2:
            raise ValueError(f"eval.video_size must be an even integer >= 16, got {self.video_size}")


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default)."""
    if n <= 0:
        raise ValueError("wilson_interval needs n >= 1")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # the edges exactly (rounding misses them)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def paired_difference(
    runs: list[dict[str, Any]], against: list[dict[str, Any]], z: float = 1.959964
) -> dict[str, Any]:
    """One run against another on the same episodes (matched by seed): the mean of the per-episode
    max-reward differences ``runs - against`` with a normal 95% interval (None below 2 episodes), and
    how many episodes only one of the two runs succeeded in.

    Paired, the seed-to-seed spread of the task cancels, so the interval is far narrower than the
    difference of two runs' own intervals when both ran the same seeds (and noise).

    Raises:
        ValueError: the two runs did not run the same seeds, or a run repeats a seed.
    """
    by_seed = {e["seed"]: e for e in against}
    seeds = [e["seed"] for e in runs]
    if len(by_seed) != len(against) or len(set(seeds)) != len(seeds) or set(seeds) != set(by_seed):
        raise ValueError("paired_difference needs two runs over the same episode seeds, each seed once")
    diffs = np.array([e["max_reward"] - by_seed[e["seed"]]["max_reward"] for e in runs], dtype=np.float64)
    mean = float(diffs.mean()) if diffs.size else 0.0
    ci = None
    if diffs.size >= 2:
        half = z * float(diffs.std(ddof=1)) / math.sqrt(diffs.size)
        ci = [mean - half, mean + half]
    return {
        "n_episodes": int(diffs.size),
        "mean_score_diff": mean,
        "mean_score_diff_ci95": ci,
        "successes_only_here": sum(1 for e in runs if e["success"] and not by_seed[e["seed"]]["success"]),
        "successes_only_there": sum(1 for e in runs if by_seed[e["seed"]]["success"] and not e["success"]),
    }


def episode_generator(noise_seed: int, episode_seed: int) -> torch.Generator:
    """The CPU generator of one episode's sampling noise."""
    return torch.Generator().manual_seed(noise_seed * 1_000_003 + episode_seed)


def aggregate(per_episode: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """The summary metrics of a list of episode records."""
    n = len(per_episode)
    successes = sum(int(e["success"]) for e in per_episode)
    lo, hi = wilson_interval(successes, n)
    return {
        "mean_score": float(np.mean([e["max_reward"] for e in per_episode])),
        "avg_max_reward": float(np.mean([e["max_reward"] for e in per_episode])),
        "avg_sum_reward": float(np.mean([e["sum_reward"] for e in per_episode])),
        "pc_success": 100.0 * successes / n,
        "pc_success_ci95": [100.0 * lo, 100.0 * hi],
        "n_episodes": n,
        "n_successes": successes,
        "mean_steps": float(np.mean([e["n_steps"] for e in per_episode])),
        "mean_final_coverage": float(np.mean([e["final_coverage"] for e in per_episode])),
        "eval_s": wall_s,
        "eval_ep_s": wall_s / n,
    }
