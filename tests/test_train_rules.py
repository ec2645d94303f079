"""Training's bookkeeping rules, each against a hand computation: the batch order, the metrics kept
on resume, the rows of the last step, validation on the saved (EMA) weights weighted by batch size, and
the fields a resume may change."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_random_store

from parapolicy.policy import train as train_module
from parapolicy.policy.config import PolicyConfig, UNetConfig
from parapolicy.policy.data.image_dataset import make_dataset
from parapolicy.policy.model.pretrained import load_policy
from parapolicy.policy.train import TrainConfig

TINY = PolicyConfig(unet=UNetConfig(down_dims=(16, 32), diffusion_step_embed_dim=16))


def test_batches_drop_the_partial_one_and_reshuffle_each_epoch():
    batches = train_module._Batches(10, 4, seed=7)
    assert batches.per_epoch == 2  # 10 windows in batches of 4: the last 2 are dropped, as the reference
    first = np.concatenate([batches.indices(0), batches.indices(1)])
    second = np.concatenate([batches.indices(2), batches.indices(3)])
    assert len(set(first)) == 8 and not np.array_equal(first, second)


def test_metrics_truncated_at_a_checkpoint_keep_its_own_rows(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (4, 6, 8)))
    train_module._truncate_metrics(path, 6)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [4, 6]


def test_betas_must_be_below_one():
    with pytest.raises(ValueError, match=r"betas must be two numbers in \[0, 1\), got \(0.9, 1.0\)"):
        TrainConfig(betas=(0.9, 1.0), dataset_path="/nowhere")


@pytest.fixture
def store(tmp_path) -> Path:
    return write_random_store(tmp_path / "s.zarr", 6, 30)


def test_the_last_step_logs_and_validates_on_the_saved_ema_weights(store, tmp_path):
    cfg = TrainConfig(
        dataset_path=str(store), policy=TINY, num_steps=7, batch_size=16, log_every=4, val_every=5,
        checkpoint_every=5, progress=False, val_ratio=0.3,
    )  # fmt: skip
    config = train_module._config_json(cfg)
    cfg.device = "cuda"  # a run-control field: a resume may change it
    assert train_module._config_json(cfg) == config
    cfg.device = "cpu"
    checkpoint = train_module.train(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [4, 7]  # 7 is not a multiple of 4: logged anyway
    assert [r["step"] for r in rows if "val_loss" in r] == [5, 7]
    saved = load_policy(checkpoint / "pretrained_model").eval()
    val = make_dataset(
        TINY, cfg.dataset_path, cfg.val_ratio, None, cfg.seed, split="train"
    ).get_validation_dataset()
    last = [r["val_loss"] for r in rows if "val_loss" in r][-1]
    assert last == pytest.approx(train_module.validation_loss(saved, val, 16, cfg.seed), abs=1e-6)
    losses, weights = [], []  # by hand: the mean over windows, so batches weigh by their size
    for k, first in enumerate(range(0, len(val), 16)):
        batch = val.get_batch(np.arange(first, min(first + 16, len(val))))
        generator = train_module._seeded(1, 20_000_000 + k)
        losses.append(float(saved.compute_loss(batch, generator=generator).detach()))
        weights.append(len(batch["action"]))
    assert len(set(weights)) > 1  # a short last batch
    assert train_module.validation_loss(saved, val, 16, 1) == pytest.approx(
        np.average(losses, weights=weights), abs=1e-6
    )
