"""Shared fixtures: a tiny synthetic demonstration store and a tiny policy config."""

from __future__ import annotations

import os
import shutil
import sys
import time

import numpy as np
import pytest
import torch

from parapolicy.policy.config import PolicyConfig, SamplerConfig, UNetConfig, VisionConfig
from parapolicy.policy.model.policy import DiffusionPolicy

# One intra-op thread: on a shared 2-core machine torch's OpenMP threads can stall for hundreds of
# milliseconds when another process holds a core, which makes timings meaningless and tests slow.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """A 6-episode store with random low-dim data (30-35 steps each)."""
    from parapolicy.policy.data.replay_store import ReplayStore  # zarr: imported only where a store is used

    path = tmp_path_factory.mktemp("store") / "tiny.zarr"
    rng = np.random.default_rng(0)
    store = ReplayStore.create(path)
    for e in range(6):
        n = 30 + e
        store.append_episode(
            {
                "state": rng.uniform(0, 512, (n, 5)).astype(np.float32),
                "keypoint": rng.uniform(0, 512, (n, 9, 2)).astype(np.float32),
                "action": rng.uniform(0, 512, (n, 2)).astype(np.float32),
            },
            seed=e,
        )
    store.close()
    return path


def write_random_store(path, n_episodes: int, first_length: int, images: bool = False):
    """A store of ``n_episodes`` random episodes of first_length, first_length + 1, ... steps (seeded),
    with 96 x 96 images under ``img`` when asked."""
    from parapolicy.policy.data.replay_store import ReplayStore

    rng = np.random.default_rng(0)
    store = ReplayStore.create(path)
    for e in range(n_episodes):
        n = first_length + e
        episode = {
            "state": rng.uniform(0, 512, (n, 5)).astype(np.float32),
            "keypoint": rng.uniform(0, 512, (n, 9, 2)).astype(np.float32),
            "action": rng.uniform(0, 512, (n, 2)).astype(np.float32),
        }
        if images:
            episode["img"] = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        store.append_episode(episode, seed=e)
    store.close()
    return path


@pytest.fixture
def tiny_config() -> PolicyConfig:
    """A policy small enough for unit tests (two U-Net levels of 16 and 32 channels)."""
    return PolicyConfig(unet=UNetConfig(down_dims=(16, 32), diffusion_step_embed_dim=16))


@pytest.fixture
def tiny_policy(tiny_config) -> DiffusionPolicy:
    """A randomly initialised tiny policy with a fitted normaliser (seeded)."""
    torch.manual_seed(0)
    policy = DiffusionPolicy(tiny_config)
    gen = torch.Generator().manual_seed(1)
    policy.normalizer.fit(
        {"obs": torch.rand(200, 20, generator=gen) * 512, "action": torch.rand(200, 2, generator=gen) * 512}
    )
    return policy.eval()


def image_config(num_inference_steps: int = 10, **vision) -> PolicyConfig:
    """A tiny ``pixels_agent_pos`` policy config (96x96 images, small U-Net); ``vision`` overrides
    `VisionConfig` fields."""
    return PolicyConfig(
        obs_dim=2,
        obs_type="pixels_agent_pos",
        vision=VisionConfig(**vision),
        unet=UNetConfig(down_dims=(16, 32), diffusion_step_embed_dim=16),
        sampler=SamplerConfig(num_inference_steps=num_inference_steps),
    )


def slow_denoiser(policy, ms: float) -> None:
    """Make every denoiser call of ``policy`` take ``ms`` longer (wall-clock tests)."""
    inner = policy.denoise

    def denoise(x, t, cond):
        time.sleep(ms / 1000)
        return inner(x, t, cond)

    policy.__dict__["denoise"] = denoise


def console_script(name: str) -> str:
    """Path of an installed console script: beside this interpreter first (venv not activated), else PATH."""
    exe = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    assert exe is not None, f"console script {name} is not installed (pip install -e .)"
    return exe


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random policy saved with `save_policy`, once per test module (for the job tests)."""
    from parapolicy.policy.model.pretrained import save_policy

    torch.manual_seed(0)
    policy = DiffusionPolicy(PolicyConfig(unet=UNetConfig(down_dims=(16, 32), diffusion_step_embed_dim=16)))
    gen = torch.Generator().manual_seed(1)
    policy.normalizer.fit(
        {"obs": torch.rand(200, 20, generator=gen) * 512, "action": torch.rand(200, 2, generator=gen) * 512}
    )
    return save_policy(policy, tmp_path_factory.mktemp("ckpt") / "tiny")
