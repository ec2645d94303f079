"""Closed-loop evaluation of a policy on PushT with the reference protocol (no hydra).

Episodes start from the reference initial-state sampler (`reference_initial_state(seed)`, legacy set
order), seeds ``start_seed .. start_seed + n_episodes - 1`` (reference test seeds: 100000...). Up to
``batch_size`` episodes run in lockstep so that one network call plans for all of them; each episode
has its own noise generator seeded from (noise_seed, episode seed), so results do not depend on the
batch size or on which episodes share a batch. As the reference's MultiStepWrapper: the first
observation is repeated to fill the To-step history, a chunk of Ta actions is executed one by one and
stops early when the episode ends, and an episode ends at success or after ``max_steps`` steps.
Metrics: ``mean_score`` (the reference's headline: mean over episodes of the max reward), success rate
with a Wilson 95% interval, steps and final coverage.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from parapolicy.envs import PushTEnv, reference_initial_state
from parapolicy.envs.video import check_video_output, write_mp4

from .policy import OBS_KEY, DiffusionPolicy


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
    return max(0.0, centre - half), min(1.0, centre + half)


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


def evaluate_policy(
    policy: DiffusionPolicy,
    cfg: EvalConfig,
    video_dir: Path | None = None,
    on_episode: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run ``cfg.n_episodes`` closed-loop episodes and return ``{"per_episode": [...], "aggregated": {...}}``.

    Args:
        policy: the policy (its current sampler is used).
        cfg: evaluation settings.
        video_dir: where ``eval_episode_<i>.mp4`` go (None: no videos).
        on_episode: called with each finished episode's record (progress reporting).
    """
    if video_dir is not None and cfg.max_videos:
        check_video_output(video_dir)  # fail before the rollouts, not after
    start = time.perf_counter()
    seeds = [cfg.start_seed + i for i in range(cfg.n_episodes)]
    records: list[dict[str, Any]] = []
    bar = tqdm(total=cfg.n_episodes, desc="eval", disable=not cfg.progress, leave=False)
    for first in range(0, cfg.n_episodes, cfg.batch_size):
        batch = list(range(first, min(first + cfg.batch_size, cfg.n_episodes)))
        for rec in _run_batch(policy, cfg, batch, seeds, video_dir):
            records.append(rec)
            bar.update(1)
            bar.set_postfix(success=f"{sum(r['success'] for r in records)}/{len(records)}")
            if on_episode is not None:
                on_episode(rec)
    bar.close()
    records.sort(key=lambda r: r["episode_ix"])
    return {"per_episode": records, "aggregated": aggregate(records, time.perf_counter() - start)}


def _run_batch(
    policy: DiffusionPolicy, cfg: EvalConfig, batch: list[int], seeds: list[int], video_dir: Path | None
) -> list[dict[str, Any]]:
    To, Ta = policy.config.n_obs_steps, policy.config.n_action_steps
    envs, hist, gens, frames, rec = {}, {}, {}, {}, {}
    for i in batch:
        record_video = video_dir is not None and i < cfg.max_videos
        env = PushTEnv(
            obs_type="keypoints", visualization_width=cfg.video_size, visualization_height=cfg.video_size
        )
        obs, info = env.reset(options={"reset_to_state": reference_initial_state(seeds[i])})
        envs[i], gens[i] = env, episode_generator(cfg.noise_seed, seeds[i])
        hist[i] = deque([obs] * To, maxlen=To)
        frames[i] = [env.render()] if record_video else None
        rec[i] = {
            "episode_ix": i,
            "seed": seeds[i],
            "max_reward": 0.0,
            "sum_reward": 0.0,
            "success": False,
            "n_steps": 0,
            "final_coverage": info["coverage"],
            "video_path": None,
        }
    active = list(batch)
    while active:
        history = torch.as_tensor(
            np.stack([np.stack(hist[i]) for i in active]), dtype=torch.float32
        )  # (B,To,Do)
        chunk = policy.predict_action_chunk({OBS_KEY: history}, generator=[gens[i] for i in active]).action
        chunk = chunk.cpu().numpy()  # (B, Ta, Da)
        still = []
        for row, i in enumerate(active):
            done = False
            for k in range(Ta):
                obs, reward, terminated, _, info = envs[i].step(chunk[row, k])
                r = rec[i]
                r["n_steps"] += 1
                r["max_reward"] = max(r["max_reward"], reward)
                r["sum_reward"] += reward
                r["final_coverage"] = info["coverage"]
                r["success"] = r["success"] or bool(info["is_success"])
                hist[i].append(obs)
                if frames[i] is not None:
                    frames[i].append(envs[i].render())
                if terminated or r["n_steps"] >= cfg.max_steps:
                    done = True
                    break
            if not done:
                still.append(i)
        active = still
    for i in batch:
        if frames[i] is not None:
            path = write_mp4(
                Path(video_dir) / f"eval_episode_{i}.mp4", frames[i], fps=PushTEnv.metadata["render_fps"]
            )
            rec[i]["video_path"] = str(path)
        envs[i].close()
    return [rec[i] for i in batch]
