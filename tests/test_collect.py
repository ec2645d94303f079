"""parapolicy-collect: a few expert episodes into a store, summary, append, refusal, exact replay."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

from parapolicy.envs import ENV_ID, reference_initial_state
from parapolicy.policy.collect import CollectConfig, collect
from parapolicy.policy.data.dataset import PushTLowdimDataset
from parapolicy.policy.data.replay_store import ReplayStore


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("collect")
    info = collect(CollectConfig(n_episodes=3, start_seed=7, workers=2, progress=False), out)
    return out, info


def test_collect_writes_store_and_summary(collected):
    out, info = collected
    assert info["episodes_kept"] == 3 and info["episodes_tried"] >= 3
    summary = json.loads((out / "collect_info.json").read_text())
    assert summary == json.loads(json.dumps(info))
    with ReplayStore.open(
        out / "pusht_expert.zarr", keys=("state", "action", "keypoint", "n_contacts")
    ) as store:
        assert store.n_episodes == 3 and store.env_version == ENV_ID
        seeds = store.episode_seeds
        assert seeds == sorted(seeds) and seeds[0] >= 7 and len(set(seeds)) == 3
        assert store.trailing_shape("keypoint") == (9, 2)
        assert store.expert["coarse_depths"]
    assert len(PushTLowdimDataset(out / "pusht_expert.zarr", val_ratio=0.0)) > 0


def test_recorded_episode_replays_exactly(collected):
    out, _ = collected
    with ReplayStore.open(out / "pusht_expert.zarr", keys=("state", "action")) as store:
        ep = store.get_episode(0, ("state", "action"))
        seed = store.episode_seeds[0]
    env = gym.make(ENV_ID, obs_type="state")
    _, info = env.reset(options={"reset_to_state": reference_initial_state(seed)})
    terminated = False
    for t, action in enumerate(ep["action"]):
        state = np.concatenate([info["pos_agent"], info["block_pose"]]).astype(np.float32)
        np.testing.assert_array_equal(state, ep["state"][t])
        _, _, terminated, _, info = env.step(action)
    assert terminated and info["is_success"]


def test_existing_store_needs_append(collected, tmp_path):
    out, _ = collected
    with pytest.raises(FileExistsError, match="append=true"):
        collect(
            CollectConfig(n_episodes=1, output_path=str(out / "pusht_expert.zarr"), progress=False), tmp_path
        )
    info = collect(
        CollectConfig(
            n_episodes=1,
            start_seed=20,
            append=True,
            workers=1,
            output_path=str(out / "pusht_expert.zarr"),
            progress=False,
        ),
        tmp_path,
    )
    assert info["episodes_kept"] == 1
    with ReplayStore.open(out / "pusht_expert.zarr") as store:
        assert store.n_episodes == 4 and store.episode_seeds[-1] == 20


def test_bad_collect_settings():
    with pytest.raises(ValueError, match="keep"):
        CollectConfig(keep="some")
    with pytest.raises(ValueError, match="evaluation seeds"):
        CollectConfig(start_seed=99_990, n_episodes=10)


def test_appending_near_the_evaluation_seeds_is_a_config_error(tmp_path):
    from parapolicy.policy.collect import _start_seed
    from parapolicy.policy.errors import ConfigError

    cfg = CollectConfig(n_episodes=1, append=True, progress=False)
    with pytest.raises(ConfigError, match=r"collection seeds 99991\.\..* would reach the evaluation seeds"):
        _start_seed(cfg, [99_990], tmp_path / "hi.zarr")  # the run-time start: after the store's largest seed
