"""Reliability of training runs (issue 15, item 5): resuming on changed data, dead-end run folders."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.control.evaluation import EvalConfig
from parapolicy.policy.data.replay_store import DatasetError, ReplayStore
from parapolicy.policy.errors import ConfigError, DeviceUnavailableError, NoRunToResumeError, RunFolderError
from parapolicy.policy.model.checkpoint import CheckpointError, read_metadata
from parapolicy.policy.train import TrainConfig, train


def make_cfg(store, policy_cfg, **kw) -> TrainConfig:
    base = {
        "dataset_path": str(store),
        "policy": policy_cfg,
        "num_steps": 6,
        "batch_size": 16,
        "log_every": 2,
        "val_every": 0,
        "checkpoint_every": 2,
        "progress": False,
    }
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def own_store(tmp_path, tiny_store):
    path = tmp_path / "store.zarr"
    shutil.copytree(tiny_store, path)
    return path


def test_checkpoint_records_the_data_fingerprint(tmp_path, own_store, tiny_config):
    ckpt = train(make_cfg(own_store, tiny_config), tmp_path / "run")
    data = read_metadata(ckpt / "pretrained_model")["data_fingerprint"]
    assert data["n_episodes"] == 6 and len(data["sha256"]) == 64


def test_resume_after_episodes_were_appended_is_refused_unless_allowed(tmp_path, own_store, tiny_config):
    run = tmp_path / "run"
    train(make_cfg(own_store, tiny_config), run)
    store = ReplayStore.open(own_store, keys=(), mode="a")
    rng = np.random.default_rng(1)
    store.append_episode(
        {
            k: rng.uniform(0, 512, (30, *s)).astype(np.float32)
            for k, s in (("state", (5,)), ("keypoint", (9, 2)), ("action", (2,)))
        },
        seed=99,
    )
    store.close()
    with pytest.raises(CheckpointError, match=r"demonstration store changed since .*allow_data_change=true"):
        train(make_cfg(own_store, tiny_config, resume=True), run)
    with pytest.warns(UserWarning, match="resuming anyway"):
        ckpt = train(make_cfg(own_store, tiny_config, resume=True, allow_data_change=True), run)
    assert read_metadata(ckpt / "pretrained_model")["data_fingerprint"]["n_episodes"] == 6


def _killed_before_first_checkpoint(run, own_store, tiny_config):
    train(make_cfg(own_store, tiny_config), run)
    shutil.rmtree(run / "checkpoints")  # as if killed before the first save: config and metrics only


def test_dead_end_folder_is_refused_fresh_with_the_way_forward(tmp_path, own_store, tiny_config):
    run = tmp_path / "run"
    _killed_before_first_checkpoint(run, own_store, tiny_config)
    with pytest.raises(
        RunFolderError, match="no complete checkpoint.*pass resume=true to restart it from step 0"
    ):
        train(make_cfg(own_store, tiny_config), run)


def test_dead_end_folder_restarts_from_scratch_in_place_with_resume(tmp_path, own_store, tiny_config):
    run = tmp_path / "run"
    _killed_before_first_checkpoint(run, own_store, tiny_config)
    reference = train(make_cfg(own_store, tiny_config), tmp_path / "reference")
    with pytest.warns(UserWarning, match="no complete checkpoint.*restarting it from step 0 in place"):
        ckpt = train(make_cfg(own_store, tiny_config, resume=True), run)
    assert ckpt.name == "000006"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]  # the dead run's rows were dropped
    a = (ckpt / "pretrained_model" / "model.safetensors").read_bytes()
    assert a == (reference / "pretrained_model" / "model.safetensors").read_bytes()


def test_dangling_last_falls_back_to_the_newest_complete_checkpoint(tmp_path, own_store, tiny_config):
    run = tmp_path / "run"
    train(make_cfg(own_store, tiny_config, num_steps=4), run)
    shutil.rmtree(run / "checkpoints" / "000004")  # `last` now dangles
    with pytest.warns(
        UserWarning,
        match=r"missing, incomplete or older; resuming from the newest complete checkpoint .*000002",
    ):
        ckpt = train(make_cfg(own_store, tiny_config, num_steps=4, resume=True), run)
    assert ckpt.name == "000004" and (run / "checkpoints" / "last").resolve() == ckpt.resolve()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # healed: nothing to warn about any more
        train(make_cfg(own_store, tiny_config, num_steps=4, resume=True), run)


def test_resume_in_an_empty_folder_says_there_is_nothing_to_resume(tmp_path, own_store, tiny_config):
    with pytest.raises(NoRunToResumeError, match="holds no run to continue"):
        train(make_cfg(own_store, tiny_config, resume=True), tmp_path / "empty")


def test_a_last_link_older_than_a_complete_checkpoint_resumes_from_the_newer(
    tmp_path, own_store, tiny_config
):
    """A kill between a checkpoint's write and the link's update leaves ``last`` one checkpoint behind:
    the resume continues from the newer one (re-training to its step would meet it and stop)."""
    run = tmp_path / "run"
    train(make_cfg(own_store, tiny_config, num_steps=4), run)
    (run / "checkpoints" / "last").unlink()
    (run / "checkpoints" / "last").symlink_to("000002")
    with pytest.warns(UserWarning, match=r"incomplete or older; resuming from .*000004"):
        ckpt = train(make_cfg(own_store, tiny_config, num_steps=4, resume=True), run)
    assert ckpt.name == "000004" and (run / "checkpoints" / "last").resolve() == ckpt.resolve()


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        ({"eval_sampler": {"num_inference_steps": 500}}, ConfigError, "num_inference_steps=500 must be <="),
        ({"device": "foo"}, DeviceUnavailableError, "device='foo' is not a torch device"),
        ({"weight_decay": -1.0}, ValueError, "weight_decay must be >= 0, got -1.0"),
        ({"ema_max_decay": 2.0}, ValueError, "0 <= ema_max_decay < 1, got 0.75, 2.0"),
        ({"ema_power": -1.0}, ValueError, "need ema_power > 0"),
    ],
)
def test_bad_training_values_fail_before_anything_runs(own_store, tiny_config, kw, error, message):
    if "eval_sampler" in kw:
        kw = {"eval_sampler": SamplerConfig(**kw["eval_sampler"])}
    with pytest.raises(error, match=message):
        make_cfg(own_store, tiny_config, **kw)


def test_a_store_of_short_episodes_is_refused_before_the_run_is_written(tmp_path, tiny_config):
    store = ReplayStore.create(tmp_path / "short.zarr")
    rng = np.random.default_rng(0)
    for e in range(4):
        data = {"state": (5,), "keypoint": (9, 2), "action": (2,)}
        store.append_episode(
            {k: rng.uniform(0, 512, (5, *d)).astype(np.float32) for k, d in data.items()}, seed=e
        )
    store.close()
    with pytest.raises(
        DatasetError, match="has no windows: every training episode is shorter than the 8 steps"
    ):
        train(make_cfg(tmp_path / "short.zarr", tiny_config), tmp_path / "run")
    assert not (tmp_path / "run" / "train_config.json").exists()


def test_a_resume_names_what_changed_and_reads_the_store_from_any_directory(
    tmp_path, own_store, tiny_config, monkeypatch
):
    run = tmp_path / "run"
    monkeypatch.chdir(own_store.parent)
    train(make_cfg(own_store.name, tiny_config, num_steps=2), run)  # a relative store path
    assert json.loads((run / "train_config.json").read_text())["dataset_path"] == str(own_store.resolve())
    monkeypatch.chdir(tmp_path.parent)
    ckpt = train(make_cfg(own_store, tiny_config, num_steps=2, resume=True), run)  # the same store, absolute
    assert ckpt.name == "000002"
    with pytest.raises(CheckpointError, match=r"resume=true but lr, seed differ"):
        train(make_cfg(own_store, tiny_config, num_steps=2, resume=True, lr=1e-3, seed=1), run)


def test_no_validation_windows_write_no_validation_rows(tmp_path, own_store, tiny_config):
    run = tmp_path / "run"
    train(make_cfg(own_store, tiny_config, num_steps=2, val_ratio=0.0, val_every=1), run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and not any("val_loss" in r for r in rows)


def test_periodic_evaluation_writes_its_videos(tmp_path, own_store, tiny_config):
    run = tmp_path / "run"
    evaluation = EvalConfig(n_episodes=1, max_steps=4, max_videos=1, progress=False)
    cfg = make_cfg(
        own_store, tiny_config, num_steps=2, eval_every=2, eval=evaluation,
        eval_sampler=SamplerConfig(num_inference_steps=4),
    )  # fmt: skip
    train(cfg, run)
    assert len(list((run / "videos" / "000002").glob("*.mp4"))) == 1
