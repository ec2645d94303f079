"""Checkpoint safety: strict, versioned, never pickle, nothing half-loaded."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

from parapolicy.policy.model.checkpoint import CheckpointError, read_config
from parapolicy.policy.model.pretrained import load_policy, save_policy


@pytest.fixture
def saved(tmp_path, tiny_policy):
    return save_policy(tiny_policy, tmp_path / "ckpt")


def actions(policy):
    gen = torch.Generator().manual_seed(3)
    obs = {"obs": torch.linspace(0, 512, 40).reshape(2, 20)}
    return policy.predict_action_chunk(obs, generator=gen).plan


def test_round_trip_gives_identical_actions(saved, tiny_policy):
    loaded = load_policy(saved)
    assert torch.equal(actions(loaded), actions(tiny_policy))
    assert json.loads((saved / "config.json").read_text())["schema_version"] == 1


def test_never_overwrites(saved, tiny_policy):
    with pytest.raises(FileExistsError, match="refusing to overwrite existing checkpoint"):
        save_policy(tiny_policy, saved)


def edit_model(path, fn):
    tensors = load_file(str(path / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(path / "model.safetensors"))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t.pop(next(iter(t))), "missing keys"),
        (lambda t: t.__setitem__("ema.extra.weight", torch.zeros(1)), "unexpected keys"),
        (lambda t: t.__setitem__("ema.final_conv.1.bias", torch.zeros(7)), "shape/dtype mismatch"),
        (  # the right shape in float64: not cast silently
            lambda t: t.__setitem__("ema.final_conv.1.bias", t["ema.final_conv.1.bias"].double()),
            r"mismatch: final_conv\.1\.bias: checkpoint \(2,\) torch\.float64, model \(2,\) torch\.float32",
        ),
    ],
)
def test_weight_mismatches_are_named(saved, mutate, message):
    edit_model(saved, mutate)
    with pytest.raises(CheckpointError, match=message):
        load_policy(saved)


def test_truncated_weights(saved):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_policy(saved)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("{not json", "not valid JSON"),
        (json.dumps({"kind": "something-else", "schema_version": 1, "policy": {}}), "is not a parapolicy"),
        (
            json.dumps({"kind": "parapolicy-diffusion-policy", "schema_version": 99, "policy": {}}),
            "schema_version 99",
        ),
        (
            json.dumps(
                {"kind": "parapolicy-diffusion-policy", "schema_version": 1, "policy": {"horizon": 10}}
            ),
            "invalid policy config",
        ),
        (
            json.dumps({"kind": "parapolicy-diffusion-policy", "schema_version": 1, "policy": {"typo": 1}}),
            "unknown field",
        ),
    ],
)
def test_bad_config_json(saved, content, message):
    (saved / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match=message):
        load_policy(saved)


def test_missing_files(saved, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(tmp_path / "nowhere")
    os.remove(saved / "normalizer.safetensors")
    with pytest.raises(CheckpointError, match="missing"):
        load_policy(saved)


class _Payload:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def test_pickle_is_refused_without_being_executed(tmp_path, saved):
    sentinel = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(str(sentinel)))
    as_file = tmp_path / "policy.ckpt"
    as_file.write_bytes(payload)
    with pytest.raises(CheckpointError, match="pickle"):
        load_policy(as_file)
    torch.save({"x": _Payload(str(sentinel))}, tmp_path / "torch.pt")
    with pytest.raises(CheckpointError, match="pickle"):
        load_policy(tmp_path / "torch.pt")
    (saved / "model.safetensors").write_bytes(payload)  # a pickle disguised as the weights file
    with pytest.raises(CheckpointError, match="pickle"):
        load_policy(saved)
    assert not sentinel.exists()


def test_failed_load_leaves_no_partial_model(saved, tiny_policy):
    broken = saved.parent / "broken"
    shutil.copytree(saved, broken)
    edit_model(broken, lambda t: t.__setitem__("ema.final_conv.1.bias", torch.zeros(7)))
    before = {k: v.clone() for k, v in tiny_policy.state_dict().items()}
    with pytest.raises(CheckpointError, match="final_conv.1.bias: checkpoint \\(7,\\)"):
        load_policy(broken)
    after = tiny_policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert read_config(saved)["horizon"] == 16


def test_saved_files_are_readable_as_the_umask_says(tiny_policy, tmp_path):
    """safetensors creates its files 0600 whatever the umask: a checkpoint's files get the umask's mode,
    so another user or container can load what this one saved."""
    old = os.umask(0o022)
    try:
        path = save_policy(tiny_policy, tmp_path / "ckpt")
    finally:
        os.umask(old)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in path.iterdir()}
    assert modes["model.safetensors"] == modes["normalizer.safetensors"] == modes["config.json"] == 0o644
