"""Environment demo: one PushT episode driven by a simple scripted pusher, saved as MP4 + PNG strip.

The scripted pusher is deliberately naive (approach the side of the block away from the goal, then
push toward the goal); it shows the environment working end to end, not a good policy.
No hydra imports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import gymnasium as gym
import numpy as np

from . import ENV_ID, GOAL_POSE, reference_initial_state
from .geometry import local_to_world
from .video import write_mp4

_COG_LOCAL = np.array([0.0, 45.0])


@dataclass
class DemoConfig:
    """Settings of `run_demo`."""

    seed: int = 100000
    """Reference initial-state seed of the episode."""
    max_steps: int = 300
    """Control steps at most (the env's time limit is 300)."""
    video_size: int = 256
    """Side of the rendered frames in pixels (even)."""
    strip_frames: int = 8
    """Frames in the PNG strip."""

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 1 <= self.max_steps <= 300:
            raise ValueError(f"max_steps must be in [1, 300], got {self.max_steps}")
        if self.video_size < 16 or self.video_size % 2:
            raise ValueError(f"video_size must be an even integer >= 16, got {self.video_size}")
        if self.strip_frames < 1:
            raise ValueError(f"strip_frames must be >= 1, got {self.strip_frames}")


def scripted_target(agent: np.ndarray, block_pose: np.ndarray) -> np.ndarray:
    """Next target of the naive pusher: go behind the block's centre of gravity, then push goalward."""
    cog = local_to_world(_COG_LOCAL, block_pose)
    goal = local_to_world(_COG_LOCAL, GOAL_POSE)
    to_goal = goal - cog
    dist = float(np.linalg.norm(to_goal))
    direction = to_goal / max(dist, 1e-6)
    behind = cog - direction * 85.0
    if np.linalg.norm(agent - behind) > 25.0 and np.dot(agent - cog, direction) > -60.0:
        # on the wrong side: circle round the block at radius 120 toward the point behind it
        ang_agent = math.atan2(agent[1] - cog[1], agent[0] - cog[0])
        ang_behind = math.atan2(behind[1] - cog[1], behind[0] - cog[0])
        delta = (ang_behind - ang_agent + math.pi) % (2 * math.pi) - math.pi
        ang = ang_agent + float(np.clip(delta, -0.35, 0.35))
        return np.clip(cog + 120.0 * np.array([math.cos(ang), math.sin(ang)]), 0.0, 512.0)
    step = min(20.0, dist)
    return np.clip(agent + (behind - agent) * 0.5 + direction * step, 0.0, 512.0)


def run_demo(cfg: DemoConfig, out_dir: Path) -> dict:
    """Run the episode, write ``demo.mp4`` and ``demo_strip.png`` to ``out_dir``, return a summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = gym.make(
        ENV_ID,
        obs_type="state",
        visualization_width=cfg.video_size,
        visualization_height=cfg.video_size,
        max_episode_steps=cfg.max_steps,
    )
    obs, info = env.reset(options={"reset_to_state": reference_initial_state(cfg.seed)})
    frames = [env.render()]
    coverages = [info["coverage"]]
    terminated = truncated = False
    while not (terminated or truncated):
        target = scripted_target(obs[:2], info["block_pose"])
        obs, _, terminated, truncated, info = env.step(target.astype(np.float32))
        frames.append(env.render())
        coverages.append(info["coverage"])
    env.close()
    video = write_mp4(out_dir / "demo.mp4", frames, fps=env.metadata["render_fps"])
    picks = np.linspace(0, len(frames) - 1, min(cfg.strip_frames, len(frames))).round().astype(int)
    strip = np.concatenate([frames[i] for i in picks], axis=1)
    strip_path = out_dir / "demo_strip.png"
    if not cv2.imwrite(str(strip_path), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {strip_path}")
    return {
        "seed": cfg.seed,
        "steps": len(frames) - 1,
        "initial_coverage": coverages[0],
        "final_coverage": coverages[-1],
        "max_coverage": max(coverages),
        "success": bool(info["is_success"]),
        "video": str(video),
        "strip": str(strip_path),
    }
