"""The `Task` protocol: what the controller needs to know about an environment, and nothing more.

The controller (`controller.py`) drives any environment through a `Task`: it makes the env, resets it
to the start state of a seed, turns the env's ``(obs, info)`` into the policy's observation, reads the
score and success of a step, asks for the safe (fallback) action and writes episode videos.
Implementations live in ``policy/control/tasks/`` (PushT-v0 of this repository, HuggingFace's
gym-pusht); `tasks.make_task` builds one by name, `tasks.task_for_policy` the one a policy needs.

A task serves one observation type, the policy config's ``obs_type`` (`config.OBS_TYPES`): ``state``, a
low-dim (Do,) array per step, or ``pixels_agent_pos``, a mapping ``{"pixels": (S, S, 3) uint8,
"agent_pos": (Do,)}`` per step (`model.image_observation`). `check_task_serves` refuses a policy whose
observations the task does not give, before any episode runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from parapolicy.policy.config import OBS_TYPES, PolicyConfig


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

    obs_type: str
    """The observation type `observation` returns (one of `config.OBS_TYPES`)."""

    def make_env(self, video_size: int) -> Any:
        """A new environment whose ``render()`` gives (video_size, video_size, 3) uint8 frames."""
        ...

    def reset(self, env: Any, seed: int) -> tuple[Any, dict[str, Any]]:
        """Reset ``env`` to the start state of ``seed``; returns Gymnasium's ``(obs, info)``."""
        ...

    def observation(self, obs: Any, info: dict[str, Any]) -> Any:
        """The policy's observation of this state: (Do,) for ``state``, ``{"pixels", "agent_pos"}`` for
        ``pixels_agent_pos`` (passed through unchecked: the policy validates)."""
        ...

    def score(self, reward: float, info: dict[str, Any]) -> StepScore:
        """Reward, progress and success of the state ``info`` describes (reward 0 after a reset)."""
        ...

    def safe_action(self, obs: Any, info: dict[str, Any]) -> np.ndarray:
        """The fallback action (Da,) float64 in this state: what the robot does without a plan."""
        ...

    def forecast(self, env: Any, observation: Any, actions: np.ndarray, objects: bool = False) -> list[Any]:
        """The observations after each of ``actions`` ((n, Da), executed from now) as the robot can
        predict them: its own state advanced by its controller, the rest of ``observation`` (the
        latest, `observation`'s format) as it is, or with ``objects`` forecast too
        (``control.forecast=robot`` / ``robot_and_block``; `stitching`)."""
        ...

    def prepare_object_forecast(self) -> None:
        """Load what ``forecast(..., objects=True)`` needs, before any episode; raise ValueError naming
        why the task cannot forecast its objects for this policy."""
        ...

    def check_video_output(self, directory: Path) -> None:
        """Fail before any rollout when videos could not be written into ``directory``."""
        ...

    def write_video(self, path: Path, frames: Sequence[np.ndarray]) -> Path:
        """Encode ``render()`` frames as a video at ``path`` (at the task's frame rate); returns the path."""
        ...


def check_obs_type(task_name: str, obs_type: str, image_size: int) -> None:
    """Raise ValueError naming the choices when a task cannot be made for ``obs_type`` / ``image_size``."""
    if obs_type not in OBS_TYPES:
        raise ValueError(
            f"task {task_name!r} serves observation types {OBS_TYPES}, not obs_type={obs_type!r}"
        )
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"task {task_name!r}: image_size must be an integer >= 8, got {image_size!r}")


def served_image_size(task_name: str, config: PolicyConfig) -> int:
    """The side S of the (S, S, 3) images an image policy takes (PushT renders square RGB images).

    Raises:
        ValueError: the policy's ``vision.image_shape`` is not (3, S, S).
    """
    C, H, W = config.vision.image_shape
    if C != 3 or H != W:
        raise ValueError(
            f"task {task_name!r} renders square RGB images (3, S, S); the policy takes images of shape "
            f"(C, H, W) = {(C, H, W)} (vision.image_shape), which it cannot serve"
        )
    return int(H)


def check_task_serves(task: Task, config: PolicyConfig) -> None:
    """Fail before any episode when ``task``'s observations are not those the policy takes.

    Raises:
        ValueError: the task serves another ``obs_type`` (or, for images, another image size), naming
            both and how to make the right task.
    """
    served = getattr(task, "obs_type", "state")
    if served != config.obs_type:
        raise ValueError(
            f"the policy takes obs_type={config.obs_type!r} observations but task {task.name!r} serves "
            f"{served!r}: make the task with tasks.task_for_policy({task.name!r}, policy.config)"
        )
    if config.obs_type == "pixels_agent_pos":
        size = served_image_size(task.name, config)
        if getattr(task, "image_size", None) != size:
            raise ValueError(
                f"the policy takes ({size}, {size}, 3) images but task {task.name!r} renders "
                f"{getattr(task, 'image_size', None)} px: make the task with "
                f"tasks.task_for_policy({task.name!r}, policy.config)"
            )
