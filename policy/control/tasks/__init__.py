"""Implementations of the controller's `Task` protocol, by name (`make_task`).

- ``pusht``: this repository's PushT-v0 (`parapolicy.envs.PushTEnv`, keypoints observation), starts
  from the reference initial states of the seeds.
- ``gym_pusht``: HuggingFace's gym-pusht (``gym_pusht/PushT-v0``, optional dependency ``gym-pusht``),
  the same starts through its ``reset_to_state`` option, keypoints computed from its ``info``.
"""

from __future__ import annotations

from collections.abc import Callable

from parapolicy.policy.control.task import Task
from parapolicy.policy.control.tasks.gym_pusht import GymPushTTask
from parapolicy.policy.control.tasks.pusht import PushTTask

TASK_NAMES = ("pusht", "gym_pusht")


def make_task(name: str, env_factory: Callable[[], object] | None = None) -> Task:
    """The task called ``name`` (one of `TASK_NAMES`); ``env_factory`` overrides how ``pusht`` makes envs."""
    if name == "pusht":
        return PushTTask(env_factory=env_factory)
    if env_factory is not None:
        raise ValueError(f"env_factory is only supported for task 'pusht', got task {name!r}")
    if name == "gym_pusht":
        return GymPushTTask()  # imports gym_pusht (optional) when it makes an env
    raise ValueError(f"task must be one of {TASK_NAMES}, got {name!r}")


def check_task_name(name: str) -> None:
    """Raise ValueError naming the choices when ``name`` is not a known task (config validation)."""
    if name not in TASK_NAMES:
        raise ValueError(f"task must be one of {TASK_NAMES}, got {name!r}")


__all__ = ["TASK_NAMES", "GymPushTTask", "PushTTask", "check_task_name", "make_task"]
