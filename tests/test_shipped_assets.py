"""The shipped artifacts: the expert dataset and the default policy load, fit the limits and work."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from parapolicy.envs.geometry import keypoints_world
from parapolicy.policy.bench import BenchJobConfig
from parapolicy.policy.config import SamplerConfig, shipped_path
from parapolicy.policy.control.evaluation import EvalConfig
from parapolicy.policy.control.rollout import evaluate_policy
from parapolicy.policy.data.replay_store import ReplayStore
from parapolicy.policy.eval import EvalJobConfig
from parapolicy.policy.model.pretrained import load_policy
from parapolicy.policy.train import TrainConfig

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


def test_the_shipped_keypoints_are_the_keypoint_table_at_each_stored_pose():
    """The store's keypoint rows were recorded by the env when the demonstrations were collected: a
    golden record of `KEYPOINTS_LOCAL` (a 1 px change of one keypoint is 1 px off here)."""
    store = ReplayStore.open(ASSETS / "pusht_expert.zarr", keys=("state", "keypoint"))
    state, keypoints = store["state"][:3000].astype(np.float64), store["keypoint"][:3000].astype(np.float64)
    world = np.stack([keypoints_world(pose) for pose in state[:, 2:5]])  # (N, 9, 2)
    np.testing.assert_allclose(world, keypoints, rtol=0, atol=1e-3)


def test_default_policy():
    policy = load_policy(ASSETS / "default_policy")
    assert policy.config.unet.down_dims == (64, 128, 256)
    assert sum(p.numel() for p in policy.network.parameters()) == 4_559_554
    size = sum(f.stat().st_size for f in (ASSETS / "default_policy").iterdir())
    assert size <= 40 * 2**20


def test_default_policy_solves_pusht():
    """A short closed-loop evaluation on four reference test seeds with a 10-step DDIM sampler.

    When written the shipped policy scored 0.993 here (0.986, 1, 0.986, 1) and a network of the same
    shape with untrained weights 0.17; docs/benchmarks.md has the full 50-episode figures.
    """
    policy = load_policy(
        ASSETS / "default_policy", sampler=SamplerConfig(kind="ddim", num_inference_steps=10)
    )
    cfg = EvalConfig(n_episodes=4, batch_size=4, max_videos=0, progress=False)
    result = evaluate_policy(policy, cfg)
    assert result["aggregated"]["mean_score"] >= 0.85, [e["max_reward"] for e in result["per_episode"]]


def test_the_shipped_defaults_resolve_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no assets/ here
    assert shipped_path("assets/default_policy") == str(ASSETS / "default_policy")
    assert TrainConfig().dataset_path == str(ASSETS / "pusht_expert.zarr")
    assert EvalJobConfig().policy_path == str(ASSETS / "default_policy")
    assert BenchJobConfig(policy_path="assets/multimodal_policy").policy_path == str(
        ASSETS / "multimodal_policy"
    )
    # anything else stays as given: a missing asset, another relative path, an absolute one
    for path in ("assets/nowhere", "default_policy", "outputs/assets/default_policy", "/abs/assets", ""):
        assert shipped_path(path) == path
    assert load_policy("assets/default_policy").config.unet.down_dims == (64, 128, 256)  # the API too
    # a path that exists from the working directory wins over the shipped file of the same name
    (tmp_path / "assets" / "default_policy").mkdir(parents=True)
    assert shipped_path("assets/default_policy") == "assets/default_policy"
