"""PushT-v0 of this repository (`parapolicy.envs.PushTEnv`) as a controller `Task`.

Starts: the reference initial state of each seed (`reference_initial_state`, legacy set order), so
seeds 100000... are the reference test set. Observation: the env's ``keypoints`` vector (20,). Safe
action: target the pusher's current position (it stops where it is).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from parapolicy.envs import PushTEnv, reference_initial_state
from parapolicy.envs.video import check_video_output, write_mp4
from parapolicy.policy.control.task import StepScore


class PushTTask:
    """PushT-v0, keypoints observation; see the module docstring.

    Args:
        env_factory: builds one env (tests pass instrumented envs); default a keypoints `PushTEnv`
            rendering at the requested video size.
    """

    name = "pusht"
    render_fps = int(PushTEnv.metadata["render_fps"])

    def __init__(self, env_factory: Callable[[], Any] | None = None) -> None:
        self.env_factory = env_factory

    def make_env(self, video_size: int) -> Any:
        """A keypoints `PushTEnv` (or ``env_factory()``)."""
        if self.env_factory is not None:
            return self.env_factory()
        return PushTEnv(obs_type="keypoints", visualization_width=video_size, visualization_height=video_size)

    def reset(self, env: Any, seed: int) -> tuple[Any, dict[str, Any]]:
        """Reset to the reference initial state of ``seed``."""
        return env.reset(options={"reset_to_state": reference_initial_state(seed)})

    def observation(self, obs: Any, info: dict[str, Any]) -> np.ndarray:
        """The env's keypoints observation (20,)."""
        return np.asarray(obs)

    def score(self, reward: float, info: dict[str, Any]) -> StepScore:
        """Reward, goal coverage and success from the env's ``info``."""
        return StepScore(float(reward), float(info["coverage"]), bool(info["is_success"]))

    def safe_action(self, obs: Any, info: dict[str, Any]) -> np.ndarray:
        """Target the pusher's current position."""
        return np.asarray(info["pos_agent"], dtype=np.float64).copy()

    def check_video_output(self, directory: Path) -> None:
        """Fail fast when MP4s could not be written into ``directory`` (`parapolicy.envs.video`)."""
        check_video_output(directory)

    def write_video(self, path: Path, frames: Sequence[np.ndarray]) -> Path:
        """Encode the frames as an MP4 at the env's control rate."""
        return write_mp4(path, frames, fps=self.render_fps)
