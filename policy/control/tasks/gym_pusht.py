"""HuggingFace's gym-pusht (``gym_pusht/PushT-v0``, package ``gym-pusht``) as a controller `Task`.

gym-pusht 0.1.8 shares the reference physics and reward. Adapter choices, from its source
(``gym_pusht/envs/pusht.py``):

- Starts: ``reset(options={"reset_to_state": state})`` sets the state in the reference's legacy order
  (position, then angle), so the reference initial state of each seed (`reference_initial_state`) gives
  exactly the reference starts; its own seeding (``reset(seed=s)``) draws other starts since 0.1.6 and
  is not used.
- Observation: gym-pusht has no 9-keypoint observation (its ``environment_state_agent_pos`` holds the 8
  box corners), so for a ``state`` policy the env runs with ``obs_type="state"`` and the policy's
  keypoints vector (20,) is computed from ``info["block_pose"]`` (x, y, raw angle) and
  ``info["pos_agent"]`` with the reference keypoints (`parapolicy.envs.geometry.keypoints_world`), the
  same function PushT-v0 uses. An image policy gets gym-pusht's own ``pixels_agent_pos`` observation
  (its ``observation_width`` x ``observation_height`` rendering, without the action marker).
- Score: ``info["coverage"]`` and ``info["is_success"]`` after a step; after a reset gym-pusht reports
  no coverage, so it is computed from the block pose (`parapolicy.envs.coverage`).
- Rendering: ``render()`` draws gym-pusht's visualisation with its action marker; its marker needs a
  frame of at least 96 px.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from parapolicy.envs import coverage, reference_initial_state
from parapolicy.envs.geometry import keypoints_world
from parapolicy.policy.control.task import StepScore
from parapolicy.policy.control.tasks.pusht import PushTTask
from parapolicy.policy.model.image_observation import image_env_observation

MIN_VIDEO_SIZE = 96  # gym-pusht's action marker has zero thickness below this and OpenCV refuses it


def _gym_pusht_env_class() -> type:
    try:
        from gym_pusht.envs import PushTEnv
    except ImportError as exc:  # optional dependency
        raise ImportError(
            "task=gym_pusht needs HuggingFace's gym-pusht: pip install 'gym-pusht>=0.1.8,<0.2' "
            "(or the dev extra: pip install -e '.[dev]')"
        ) from exc
    return PushTEnv


class GymPushTTask(PushTTask):
    """gym-pusht's PushT-v0 driven with the reference starts and keypoints; see the module docstring.

    The safe action and the video writing are PushT-v0's (the same pusher and frames).
    """

    name = "gym_pusht"
    render_fps = 10

    def __init__(self, obs_type: str = "state", image_size: int = 96) -> None:
        super().__init__(env_factory=None, obs_type=obs_type, image_size=image_size)

    def make_env(self, video_size: int) -> Any:
        """A gym-pusht env (``state``, or ``pixels_agent_pos`` at ``image_size``), rendering videos at
        ``max(video_size, 96)``."""
        size = max(int(video_size), MIN_VIDEO_SIZE)
        env_class = _gym_pusht_env_class()
        return env_class(
            obs_type="state" if self.obs_type == "state" else "pixels_agent_pos",
            render_mode="rgb_array",
            observation_width=self.image_size,
            observation_height=self.image_size,
            visualization_width=size,
            visualization_height=size,
        )

    def reset(self, env: Any, seed: int) -> tuple[Any, dict[str, Any]]:
        """Reset to the reference initial state of ``seed`` through gym-pusht's ``reset_to_state``."""
        return env.reset(options={"reset_to_state": reference_initial_state(seed)})

    def observation(self, obs: Any, info: dict[str, Any]) -> Any:
        """The reference keypoints (9 x 2, world px) of the block, then the pusher (x, y): (20,); for an
        image policy gym-pusht's ``{"pixels", "agent_pos"}``."""
        if self.obs_type == "pixels_agent_pos":
            return image_env_observation(obs)
        pose = np.asarray(info["block_pose"], dtype=np.float64)  # (3,) x, y, raw angle
        return np.concatenate([keypoints_world(pose).reshape(18), np.asarray(info["pos_agent"], np.float64)])

    def pusher_state(self, env: Any) -> tuple[np.ndarray, np.ndarray]:
        """gym-pusht's pusher body: (2,) position and (2,) velocity (the same kinematic PD pusher)."""
        agent = env.unwrapped.agent
        return np.array(tuple(agent.position)), np.array(tuple(agent.velocity))

    def score(self, reward: float, info: dict[str, Any]) -> StepScore:
        """Reward, coverage and success (coverage from the pose after a reset, where info has none)."""
        cov = info.get("coverage")
        if cov is None:
            cov = coverage(np.asarray(info["block_pose"], dtype=np.float64))
        return StepScore(float(reward), float(cov), bool(info.get("is_success", False)))
