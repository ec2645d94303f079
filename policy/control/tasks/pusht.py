"""PushT-v0 of this repository (`parapolicy.envs.PushTEnv`) as a controller `Task`.

Starts: the reference initial state of each seed (`reference_initial_state`, legacy set order), so
seeds 100000... are the reference test set. Observation, by the policy's ``obs_type``: ``state``, the
env's ``keypoints`` vector (20,); ``pixels_agent_pos``, the env's ``pixels_agent_pos`` observation
``{"pixels": (S, S, 3) uint8, "agent_pos": (2,)}`` rendered at ``image_size`` (96 as the reference),
while ``render()`` draws the video frames at the video size. Safe action: target the pusher's current
position (it stops where it is). Forecast (``control.forecast=robot``): the pusher's own PD law;
with ``robot_and_block`` also the block, by `pusht_block_model.BlockMotionModel` (keypoint policies).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from parapolicy.envs import PushTEnv, reference_initial_state
from parapolicy.envs.geometry import keypoints_world
from parapolicy.envs.physics import forecast_pusher
from parapolicy.envs.video import check_video_output, write_mp4
from parapolicy.policy.control.task import StepScore, check_obs_type
from parapolicy.policy.control.tasks.pusht_block_model import (
    DEFAULT_BLOCK_MODEL,
    BlockMotionModel,
    block_pose_from_keypoints,
)
from parapolicy.policy.model.image_observation import image_env_observation

ENV_OBS_TYPE = {"state": "keypoints", "pixels_agent_pos": "pixels_agent_pos"}
"""PushT-v0's ``obs_type`` for each policy ``obs_type`` (`config.OBS_TYPES`)."""


class PushTTask:
    """PushT-v0 with the observation the policy takes; see the module docstring.

    Args:
        env_factory: builds one env (tests pass instrumented envs); default a `PushTEnv` with the
            observation of ``obs_type``, rendering videos at the requested video size.
        obs_type: the policy's observation type (`config.OBS_TYPES`).
        image_size: side of the observed images in pixels (``pixels_agent_pos`` only).
        block_model: the block model of ``control.forecast=robot_and_block`` (default: the shipped one).
    """

    name = "pusht"
    render_fps = int(PushTEnv.metadata["render_fps"])

    def __init__(
        self,
        env_factory: Callable[[], Any] | None = None,
        obs_type: str = "state",
        image_size: int = 96,
        block_model: str | Path = DEFAULT_BLOCK_MODEL,
    ) -> None:
        check_obs_type(self.name, obs_type, image_size)
        self.env_factory = env_factory
        self.obs_type = obs_type
        self.image_size = int(image_size)
        self.block_model_path = Path(block_model)
        self.block_model: BlockMotionModel | None = None

    def make_env(self, video_size: int) -> Any:
        """A `PushTEnv` with this task's observation (or ``env_factory()``)."""
        if self.env_factory is not None:
            return self.env_factory()
        size = self.image_size
        return PushTEnv(
            obs_type=ENV_OBS_TYPE[self.obs_type],
            observation_width=size,
            observation_height=size,
            visualization_width=video_size,
            visualization_height=video_size,
        )

    def reset(self, env: Any, seed: int) -> tuple[Any, dict[str, Any]]:
        """Reset to the reference initial state of ``seed``."""
        return env.reset(options={"reset_to_state": reference_initial_state(seed)})

    def observation(self, obs: Any, info: dict[str, Any]) -> Any:
        """The env's keypoints (20,), or its ``{"pixels", "agent_pos"}`` for an image policy."""
        if self.obs_type == "pixels_agent_pos":
            return image_env_observation(obs)
        return np.asarray(obs)

    def score(self, reward: float, info: dict[str, Any]) -> StepScore:
        """Reward, goal coverage and success from the env's ``info``."""
        return StepScore(float(reward), float(info["coverage"]), bool(info["is_success"]))

    def safe_action(self, obs: Any, info: dict[str, Any]) -> np.ndarray:
        """Target the pusher's current position."""
        return np.asarray(info["pos_agent"], dtype=np.float64).copy()

    def forecast(self, env: Any, observation: Any, actions: np.ndarray, objects: bool = False) -> list[Any]:
        """The pusher advanced through ``actions`` by its PD law (`envs.physics.forecast_pusher`: exact,
        the pusher is kinematic); the block as last observed, or with ``objects`` moved along by the
        block model (from its pose in the observed keypoints). For an image policy ``agent_pos`` is
        forecast and the pixels are the latest."""
        position, velocity = self.pusher_state(env)
        path = forecast_pusher(position, velocity, np.asarray(actions, dtype=np.float64))  # (n, 2)
        if self.obs_type == "pixels_agent_pos":
            dtype = np.asarray(observation["agent_pos"]).dtype
            return [{**observation, "agent_pos": p.astype(dtype)} for p in path]
        out = []
        for p in path:
            o = np.array(observation, dtype=np.float64)  # (20,) block keypoints, then the pusher
            o[-2:] = p
            out.append(o)
        if objects:  # the block moved along the pusher's path, from its pose in the observed keypoints
            block, model = block_pose_from_keypoints(np.asarray(observation)[:18]), self._block_model()
            full_path = np.concatenate([np.asarray(position, dtype=np.float64)[None], path])  # (n+1, 2)
            for k, o in enumerate(out, start=1):
                o[:18] = keypoints_world(model.predict(block, full_path[: k + 1])).ravel()
        return out

    def prepare_object_forecast(self) -> None:
        """Load the block model (``control.forecast=robot_and_block``); keypoint policies only."""
        if self.obs_type != "state":
            raise ValueError(
                f"control.forecast=robot_and_block needs a keypoint (state) policy: the block's pose is "
                f"read from the keypoints, and a {self.obs_type} policy observes pixels"
            )
        self._block_model()

    def _block_model(self) -> BlockMotionModel:
        if self.block_model is None:
            self.block_model = BlockMotionModel.load(self.block_model_path)
        return self.block_model

    def pusher_state(self, env: Any) -> tuple[np.ndarray, np.ndarray]:
        """The pusher's (2,) position and (2,) velocity now (the robot's own state)."""
        world = env.unwrapped.world
        return world.agent_position, world.agent_velocity

    def check_video_output(self, directory: Path) -> None:
        """Fail fast when MP4s could not be written into ``directory`` (`parapolicy.envs.video`)."""
        check_video_output(directory)

    def write_video(self, path: Path, frames: Sequence[np.ndarray]) -> Path:
        """Encode the frames as an MP4 at the env's control rate."""
        return write_mp4(path, frames, fps=self.render_fps)
