"""The shipped artifacts: the expert dataset and the default policy load, validate and fit the limits."""

from __future__ import annotations

from pathlib import Path

import torch

from parapolicy.policy.data.replay_store import ReplayStore
from parapolicy.policy.model.pretrained import load_policy

ASSETS = Path(__file__).parents[1] / "assets"


def test_expert_dataset():
    with ReplayStore.open(
        ASSETS / "pusht_expert.zarr", keys=("state", "action", "keypoint", "n_contacts")
    ) as s:
        assert s.n_episodes == 500 and s.n_steps == 49_260
        assert s.episode_seeds == list(range(500))
        assert s.trailing_shape("keypoint") == (9, 2)
    size = sum(f.stat().st_size for f in (ASSETS / "pusht_expert.zarr").rglob("*") if f.is_file())
    assert size <= 20 * 2**20


def test_default_policy():
    policy = load_policy(ASSETS / "default_policy")
    assert policy.config.unet.down_dims == (64, 128, 256)
    assert sum(p.numel() for p in policy.network.parameters()) == 4_559_554
    size = sum(f.stat().st_size for f in (ASSETS / "default_policy").iterdir())
    assert size <= 40 * 2**20
    out = policy.predict_action_chunk(
        {"obs": torch.full((2, 20), 256.0)}, generator=torch.Generator().manual_seed(0)
    )
    assert out.action.shape == (1, 8, 2) and torch.isfinite(out.action).all()
    assert ((out.action >= 0) & (out.action <= 512)).all()
