"""parapolicy-train init_policy: fine-tuning starts from the given policy's weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from parapolicy.policy.model.checkpoint import CheckpointError
from parapolicy.policy.model.pretrained import load_policy, load_raw_weights
from parapolicy.policy.train import TrainConfig, train


def _cfg(store, policy_cfg, **kw) -> TrainConfig:
    base = {
        "dataset_path": str(store),
        "policy": policy_cfg,
        "batch_size": 8,
        "val_every": 0,
        "progress": False,
    }
    return TrainConfig(**{**base, **kw})


def test_init_policy_starts_from_its_weights(tmp_path, tiny_store, tiny_config):
    first = train(_cfg(tiny_store, tiny_config, num_steps=2), tmp_path / "a") / "pretrained_model"
    source = load_policy(first).network.state_dict()
    # one step at a negligible learning rate: the raw weights stay those of the source
    tuned = train(
        _cfg(tiny_store, tiny_config, num_steps=1, warmup_steps=0, lr=1e-12, init_policy=str(first), seed=7),
        tmp_path / "b",
    )
    raw = load_raw_weights(tuned / "pretrained_model")
    assert raw.keys() == source.keys()
    for key, value in source.items():
        torch.testing.assert_close(raw[key], value, atol=1e-9, rtol=0)
    # without init_policy the same run starts elsewhere
    scratch = train(
        _cfg(tiny_store, tiny_config, num_steps=1, warmup_steps=0, lr=1e-12, seed=7), tmp_path / "c"
    )
    weights = load_raw_weights(scratch / "pretrained_model")
    assert any(not torch.allclose(weights[k], v) for k, v in source.items())


def test_init_policy_with_another_architecture_fails(tmp_path, tiny_store, tiny_config):
    first = train(_cfg(tiny_store, tiny_config, num_steps=1), tmp_path / "a") / "pretrained_model"
    wider = dataclasses.replace(tiny_config, unet=dataclasses.replace(tiny_config.unet, down_dims=(16, 48)))
    with pytest.raises(CheckpointError, match=r"init_policy .* \(another architecture\?\) does not match"):
        train(_cfg(tiny_store, wider, num_steps=1, init_policy=str(first)), tmp_path / "b")
