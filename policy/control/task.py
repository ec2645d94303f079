"""The `Task` protocol: what the controller needs to know about an environment, and nothing more.

The controller (`controller.py`) drives any environment through a `Task`: it makes the env, resets it
to the start state of a seed, turns the env's ``(obs, info)`` into the policy's observation, reads the
score and success of a step, asks for the safe (fallback) action and writes episode videos.
Implementations live in ``policy/control/tasks/`` (PushT-v0 of this repository, HuggingFace's
gym-pusht); `tasks.make_task` builds one by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class StepScore:
    """What a step (or a reset) scored.

    Attributes:
        reward: the step's reward (0 at a reset).
        progress: the task's progress measure in [0, 1] (PushT: goal coverage), reported as
            ``final_coverage`` in the episode records.
        success: the task is solved in this state.
    """

    reward: float
    progress: float
    success: bool


@runtime_checkable
class Task(Protocol):
    """An environment as the controller sees it (Gymnasium ``reset``/``step``/``render``/``close``)."""

    name: str
    """Short name (``pusht``, ``gym_pusht``), recorded with the results."""

    def make_env(self, video_size: int) -> Any:
        """A new environment whose ``render()`` gives (video_size, video_size, 3) uint8 frames."""
        ...

    def reset(self, env: Any, seed: int) -> tuple[Any, dict[str, Any]]:
        """Reset ``env`` to the start state of ``seed``; returns Gymnasium's ``(obs, info)``."""
        ...

    def observation(self, obs: Any, info: dict[str, Any]) -> np.ndarray:
        """The policy's observation (Do,) of this state (passed through unchecked: the policy validates)."""
        ...

    def score(self, reward: float, info: dict[str, Any]) -> StepScore:
        """Reward, progress and success of the state ``info`` describes (reward 0 after a reset)."""
        ...

    def safe_action(self, obs: Any, info: dict[str, Any]) -> np.ndarray:
        """The fallback action (Da,) float64 in this state: what the robot does without a plan."""
        ...

    def check_video_output(self, directory: Path) -> None:
        """Fail before any rollout when videos could not be written into ``directory``."""
        ...

    def write_video(self, path: Path, frames: Sequence[np.ndarray]) -> Path:
        """Encode ``render()`` frames as a video at ``path`` (at the task's frame rate); returns the path."""
        ...
