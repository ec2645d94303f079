"""Implementations of the controller's `Task` protocol, by name (`make_task`).

- ``pusht``: this repository's PushT-v0 (`parapolicy.envs.PushTEnv`, keypoints or
  ``pixels_agent_pos`` observation), starts from the reference initial states of the seeds.
- ``gym_pusht``: HuggingFace's gym-pusht (``gym_pusht/PushT-v0``, optional dependency ``gym-pusht``),
  the same starts through its ``reset_to_state`` option, keypoints computed from its ``info`` (or its
  own ``pixels_agent_pos`` observation).

Both serve either observation type of a policy (``obs_type``); `task_for_policy` makes the one a policy
needs (the jobs call it), `make_task` takes the type explicitly.
"""

from __future__ import annotations

from collections.abc import Callable

from parapolicy.policy.config import PolicyConfig
from parapolicy.policy.control.task import Task, served_image_size
from parapolicy.policy.control.tasks.gym_pusht import GymPushTTask
from parapolicy.policy.control.tasks.pusht import PushTTask

TASK_NAMES = ("pusht", "gym_pusht")


def make_task(
    name: str,
    env_factory: Callable[[], object] | None = None,
    obs_type: str = "state",
    image_size: int = 96,
) -> Task:
    """The task called ``name`` (one of `TASK_NAMES`) serving ``obs_type`` observations (images of
    ``image_size`` px for ``pixels_agent_pos``); ``env_factory`` overrides how ``pusht`` makes envs."""
    if name == "pusht":
        return PushTTask(env_factory=env_factory, obs_type=obs_type, image_size=image_size)
    if env_factory is not None:
        raise ValueError(f"env_factory is only supported for task 'pusht', got task {name!r}")
    if name == "gym_pusht":
        return GymPushTTask(obs_type, image_size)  # imports gym_pusht (optional) when it makes an env
    raise ValueError(f"task must be one of {TASK_NAMES}, got {name!r}")


def task_for_policy(name: str, config: PolicyConfig, env_factory: Callable[[], object] | None = None) -> Task:
    """The task called ``name`` making the observations a policy with ``config`` takes (its ``obs_type``;
    for images, (S, S, 3) uint8 at the S of ``config.vision.image_shape``).

    Raises:
        ValueError: an unknown task, or an image shape the task cannot render (not (3, S, S)).
    """
    check_task_name(name)
    size = served_image_size(name, config) if config.obs_type == "pixels_agent_pos" else 96
    return make_task(name, env_factory, obs_type=config.obs_type, image_size=size)


def check_task_name(name: str) -> None:
    """Raise ValueError naming the choices when ``name`` is not a known task (config validation)."""
    if name not in TASK_NAMES:
        raise ValueError(f"task must be one of {TASK_NAMES}, got {name!r}")


__all__ = ["TASK_NAMES", "GymPushTTask", "PushTTask", "check_task_name", "make_task", "task_for_policy"]
