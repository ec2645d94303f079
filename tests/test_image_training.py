"""Image windows from a store with data/img, and training an image policy with the same recipe."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import image_config, write_random_store

from parapolicy.policy.config import PolicyConfig
from parapolicy.policy.data.dataset import PushTLowdimDataset
from parapolicy.policy.data.image_dataset import PushTImageDataset, make_dataset
from parapolicy.policy.data.replay_store import DatasetError, ReplayStore
from parapolicy.policy.model.ema import EMA
from parapolicy.policy.model.pretrained import load_policy
from parapolicy.policy.train import TrainConfig, train


@pytest.fixture(scope="module")
def image_store(tmp_path_factory):
    return write_random_store(tmp_path_factory.mktemp("images") / "img.zarr", 4, 20, images=True)


def image_policy_config() -> PolicyConfig:
    return image_config(num_inference_steps=4, num_keypoints=8)


def test_image_windows_follow_the_lowdim_windows(image_store):
    ds = PushTImageDataset(image_store, val_ratio=0.25, seed=0)
    low = PushTLowdimDataset(image_store, val_ratio=0.25, seed=0)
    assert np.array_equal(ds.indices, low.indices) and len(ds) > 0
    with ReplayStore.open(image_store, keys=("img", "state")) as store:
        img, state = store.array("img").copy(), store.array("state").copy()
    batch = ds.get_batch(np.array([0, 5]))
    assert batch["pixels"].shape == (2, 2, 96, 96, 3) and batch["pixels"].dtype == torch.uint8
    assert batch["agent_pos"].shape == (2, 16, 2) and batch["action"].shape == (2, 16, 2)
    rows = ds.indices[[0, 5]]
    assert np.array_equal(batch["pixels"].numpy(), img[rows[:, :2]])
    assert np.array_equal(batch["agent_pos"].numpy(), state[rows][..., :2])
    assert rows[0, 0] == rows[0, 1] == 0  # the first window starts one step before the episode (edge pad)
    val = ds.get_validation_dataset()
    assert val.get_batch(np.array([0]))["pixels"].shape == (1, 2, 96, 96, 3)
    norm = ds.get_normalizer()
    assert norm.dim("obs") == 2 and torch.equal(
        norm.get_stats("obs")["max"], torch.from_numpy(state[:, :2].max(0))
    )
    item = ds[3]
    assert item["pixels"].shape == (2, 96, 96, 3)
    assert isinstance(make_dataset(image_policy_config(), image_store), PushTImageDataset)
    assert type(make_dataset(PolicyConfig(), image_store)) is PushTLowdimDataset


def test_make_dataset_refuses_an_obs_dim_the_store_does_not_have(image_store):
    wrong = dataclasses.replace(image_policy_config(), obs_dim=20)  # the keypoint width, not agent_pos's
    with pytest.raises(DatasetError, match=r"policy.obs_dim=20 .* 2-d .* set policy.obs_dim=2"):
        make_dataset(wrong, image_store)


def test_a_store_without_images_is_refused(tiny_store):
    with pytest.raises(
        DatasetError, match="no data/img; collect images with parapolicy-collect record_images=true"
    ):
        PushTImageDataset(tiny_store)


def test_training_an_image_policy_writes_checkpoints_and_resumes_exactly(tmp_path, image_store, monkeypatch):
    def cfg(**kw) -> TrainConfig:
        base = {
            "dataset_path": str(image_store),
            "policy": image_policy_config(),
            "num_steps": 4,
            "batch_size": 4,
            "log_every": 2,
            "val_every": 2,
            "checkpoint_every": 2,
            "val_ratio": 0.25,
            "progress": False,
        }
        return TrainConfig(**{**base, **kw})

    full = train(cfg(), tmp_path / "full")
    policy = load_policy(full / "pretrained_model")
    assert policy.config.obs_type == "pixels_agent_pos"
    obs = {"pixels": torch.zeros(2, 96, 96, 3, dtype=torch.uint8), "agent_pos": torch.rand(2, 2) * 512}
    out = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    assert out.action.shape == (1, 8, 2) and bool(torch.isfinite(out.action).all())

    calls = {"n": 0}
    original = EMA.update

    def crash_after_two(self, model):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt("simulated crash")
        return original(self, model)

    monkeypatch.setattr(EMA, "update", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(), tmp_path / "cut")
    monkeypatch.setattr(EMA, "update", original)
    resumed = train(cfg(resume=True), tmp_path / "cut")
    a, b = load_policy(full / "pretrained_model"), load_policy(resumed / "pretrained_model")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name  # random crops are drawn from the step's generator


def test_an_image_transformer_policy_trains_and_reloads(tmp_path, image_store):
    from parapolicy.policy.config import TransformerConfig

    policy_cfg = dataclasses.replace(
        image_policy_config(), network="transformer", transformer=TransformerConfig(n_layer=1, n_emb=16)
    )
    cfg = TrainConfig(
        dataset_path=str(image_store), policy=policy_cfg, num_steps=2, batch_size=4, log_every=1,
        val_every=2, checkpoint_every=2, val_ratio=0.25, progress=False,
    )  # fmt: skip
    policy = load_policy(train(cfg, tmp_path / "run") / "pretrained_model")
    assert (policy.config.network, policy.config.obs_type) == ("transformer", "pixels_agent_pos")
    obs = {"pixels": torch.zeros(2, 96, 96, 3, dtype=torch.uint8), "agent_pos": torch.rand(2, 2) * 512}
    out = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    assert out.action.shape == (1, 8, 2) and bool(torch.isfinite(out.action).all())


def test_backbone_weights_initialise_training_and_a_checkpoint_loads_without_them(tmp_path, image_store):
    from safetensors.torch import save_file

    from parapolicy.policy.config import VisionConfig
    from parapolicy.policy.model.vision import resnet_trunk

    torchvision_names = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
    torch.manual_seed(5)
    init = {}  # a torchvision-named ResNet-18 file, with values no fresh trunk has
    for k, v in resnet_trunk(VisionConfig(norm="batch_norm")).state_dict().items():
        head, _, rest = k.partition(".")
        init[f"{torchvision_names[head]}.{rest}"] = v + 0.25 if v.is_floating_point() else v
    weights = tmp_path / "resnet18.safetensors"
    save_file(init, str(weights))
    vision = VisionConfig(norm="batch_norm", backbone_weights=str(weights))
    cfg = TrainConfig(
        dataset_path=str(image_store), policy=dataclasses.replace(image_policy_config(), vision=vision),
        num_steps=1, batch_size=4, log_every=1, val_every=1, checkpoint_every=1, val_ratio=0.25,
        lr=1e-12, progress=False,
    )  # fmt: skip
    saved = train(cfg, tmp_path / "run") / "pretrained_model"
    weights.unlink()  # the checkpoint holds the trunk: another machine has no init file
    policy = load_policy(saved)
    assert policy.config.vision.backbone_weights == str(weights)  # recorded, not needed
    trunk = policy.network.rgb_encoder.backbone.state_dict()
    torch.testing.assert_close(trunk["0.weight"], init["conv1.weight"])  # one step at lr 1e-12: as it was
