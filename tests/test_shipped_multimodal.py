"""The shipped multimodal artifacts: the store replays from the multimodal expert, the policy loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from parapolicy.envs.expert import ExpertConfig, run_expert_episode
from parapolicy.policy.data.replay_store import ReplayStore
from parapolicy.policy.model.pretrained import load_policy

ASSETS = Path(__file__).parents[1] / "assets"
STORE = ASSETS / "pusht_multimodal.zarr"
POLICY = ASSETS / "multimodal_policy"


def test_multimodal_store_is_the_multimodal_experts_output():
    with ReplayStore.open(STORE, keys=("state", "action", "keypoint", "n_contacts")) as store:
        assert store.n_episodes == 107 and store.n_steps == 16_720
        assert store.episode_seeds == list(range(107))
        assert store.expert["mode"] == "multimodal"
        i = store.episode_seeds.index(57)  # the shortest episode (39 steps)
        shipped = store.get_episode(i)
    size = sum(f.stat().st_size for f in STORE.rglob("*") if f.is_file())
    assert size <= 10 * 2**20
    rec = run_expert_episode(57, ExpertConfig(mode="multimodal"), record_keys=("state",))
    assert rec.success
    np.testing.assert_array_equal(rec.data["action"], shipped["action"])
    np.testing.assert_array_equal(rec.data["state"], shipped["state"])


def test_multimodal_policy_loads_and_plans():
    policy = load_policy(POLICY)
    assert policy.config.unet.down_dims == (64, 128, 256)
    size = sum(f.stat().st_size for f in POLICY.iterdir())
    assert size <= 20 * 2**20
    out = policy.predict_action_chunk(
        {"obs": torch.full((2, 20), 256.0)}, generator=torch.Generator().manual_seed(0)
    )
    assert out.action.shape == (1, 8, 2) and torch.isfinite(out.action).all()
