"""A LeRobot image policy on PushT-v0's ``pixels_agent_pos`` observations: the policy side of a rollout
(`image_observation.env_obs_type`, `env_observation`, `history_observation`, `batch_observations`)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from parapolicy.envs import ENV_ID
from parapolicy.policy.config import PolicyConfig, SamplerConfig, UNetConfig
from parapolicy.policy.model.image_observation import (
    batch_observations,
    env_obs_type,
    env_observation,
    history_observation,
)
from parapolicy.policy.model.lerobot_format import save_lerobot_policy
from parapolicy.policy.model.policy import DiffusionPolicy
from parapolicy.policy.model.pretrained import load_policy


def lerobot_image_policy(tmp_path) -> DiffusionPolicy:
    cfg = PolicyConfig(
        obs_dim=2,
        obs_type="pixels_agent_pos",
        unet=UNetConfig(down_dims=(16, 32), diffusion_step_embed_dim=16),
        sampler=SamplerConfig(num_inference_steps=10),
    )
    torch.manual_seed(0)
    policy = DiffusionPolicy(cfg)
    policy.normalizer.fit({"obs": torch.rand(50, 2) * 512, "action": torch.rand(50, 2) * 512})
    return load_policy(save_lerobot_policy(policy.eval(), tmp_path / "lerobot"))


def test_env_pixels_feed_an_image_policy_step_by_step(tmp_path):
    policy = lerobot_image_policy(tmp_path)
    assert env_obs_type(policy.config) == "pixels_agent_pos"
    env = gym.make(ENV_ID, obs_type=env_obs_type(policy.config))
    obs, _ = env.reset(seed=0)
    assert obs["pixels"].shape == (96, 96, 3) and obs["pixels"].dtype == np.uint8
    plans = []
    original = policy.predict_action_chunk
    policy.predict_action_chunk = lambda o, **kw: plans.append(1) or original(o, **kw)
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        action = policy.select_action(env_observation(policy.config, obs), generator=gen)  # (1, 2)
        assert action.shape == (1, 2) and bool(torch.isfinite(action).all())
        obs, *_ = env.step(action[0].numpy())
    env.close()
    assert len(plans) == 2  # a new chunk every n_action_steps = 8


def test_batched_histories_sample_the_same_with_sequential_and_picard(tmp_path):
    policy = lerobot_image_policy(tmp_path)
    cfg = policy.config
    histories = []
    for seed in (0, 1):
        env = gym.make(ENV_ID, obs_type=env_obs_type(cfg))
        obs, _ = env.reset(seed=seed)
        first = env_observation(cfg, obs)
        obs, *_ = env.step(np.array([256.0, 256.0]))
        steps = [first, env_observation(cfg, obs)]  # oldest first
        env.close()
        histories.append(policy.validate_observation(history_observation(steps), history=True))
    batch = batch_observations(histories)
    assert batch["pixels"].shape == (2, 2, 96, 96, 3) and batch["agent_pos"].shape == (2, 2, 2)
    seq = policy.predict_action_chunk(batch, generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
    policy.set_sampler(SamplerConfig(num_inference_steps=10, algorithm="picard", window=4, tol=1e-4))
    par = policy.predict_action_chunk(batch, noise=(seq.x_T, seq.noise))
    torch.testing.assert_close(par.plan, seq.plan, rtol=0, atol=0.05)  # px
    lowdim = PolicyConfig()
    assert env_obs_type(lowdim) == "keypoints"
    assert batch_observations([torch.zeros(1, 2, 20)])["obs"].shape == (1, 2, 20)
