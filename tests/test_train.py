"""Training loop: metrics, checkpoints, refusal to overwrite, exact resume."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from parapolicy.policy.config import PolicyConfig, TransformerConfig
from parapolicy.policy.model.checkpoint import CheckpointError, read_tensors
from parapolicy.policy.model.ema import EMA, ema_decay
from parapolicy.policy.model.pretrained import load_policy, load_raw_weights
from parapolicy.policy.model.training_state import load_training_state, save_training_state
from parapolicy.policy.train import TrainConfig, lr_lambda, train


def make_cfg(store, policy_cfg, **kw) -> TrainConfig:
    base = {
        "dataset_path": str(store),
        "policy": policy_cfg,
        "num_steps": 12,
        "batch_size": 16,
        "log_every": 4,
        "val_every": 6,
        "checkpoint_every": 6,
        "progress": False,
    }
    return TrainConfig(**{**base, **kw})


def test_ema_and_lr_schedules_match_the_reference():
    assert ema_decay(0) == ema_decay(1) == 0.0
    assert ema_decay(2) == pytest.approx(1 - 2**-0.75)
    assert ema_decay(1001) == pytest.approx(0.994, abs=1e-3)
    assert ema_decay(10_001) == pytest.approx(0.999, abs=2e-4)
    assert ema_decay(10**7) == 0.9999
    f = lr_lambda(500, 10_500)
    assert f(0) == 0.0 and f(250) == 0.5 and f(500) == 1.0
    assert f(5500) == pytest.approx(0.5) and f(10_500) == pytest.approx(0.0, abs=1e-12)


def test_train_writes_metrics_and_loadable_checkpoints(tmp_path, tiny_store, tiny_config):
    ckpt = train(make_cfg(tiny_store, tiny_config), tmp_path / "run")
    assert ckpt.name == "000012"
    assert (tmp_path / "run" / "checkpoints" / "last").resolve() == ckpt.resolve()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [4, 8, 12]
    assert [r["step"] for r in rows if "val_loss" in r] == [6, 12]
    policy = load_policy(ckpt / "pretrained_model")
    assert set(load_raw_weights(ckpt / "pretrained_model")) == set(policy.network.state_dict())
    out = policy.predict_action_chunk(
        {"obs": torch.rand(2, 20) * 512}, generator=torch.Generator().manual_seed(0)
    )
    assert out.action.shape == (1, 8, 2) and torch.isfinite(out.action).all()


def test_refuses_to_write_into_an_existing_run(tmp_path, tiny_store, tiny_config):
    train(make_cfg(tiny_store, tiny_config, num_steps=2, checkpoint_every=0), tmp_path / "run")
    with pytest.raises(FileExistsError, match="resume=true"):
        train(make_cfg(tiny_store, tiny_config, num_steps=2, checkpoint_every=0), tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(make_cfg(tiny_store, tiny_config, resume=True), tmp_path / "fresh")


def test_resume_is_exact(tmp_path, tiny_store, tiny_config, monkeypatch):
    full = train(make_cfg(tiny_store, tiny_config), tmp_path / "full")

    calls = {"n": 0}
    original = EMA.update

    def crash_after_eight(self, model):
        calls["n"] += 1
        if calls["n"] > 8:
            raise KeyboardInterrupt("simulated crash")
        return original(self, model)

    monkeypatch.setattr(EMA, "update", crash_after_eight)
    with pytest.raises(KeyboardInterrupt, match="simulated crash"):
        train(make_cfg(tiny_store, tiny_config), tmp_path / "cut")
    monkeypatch.setattr(EMA, "update", original)
    assert (tmp_path / "cut" / "checkpoints" / "last").resolve().name == "000006"
    with (tmp_path / "cut" / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 9, "lo')  # a kill in the middle of a row: the resume drops it
    with pytest.raises(CheckpointError, match="resume=true but lr differ"):
        train(make_cfg(tiny_store, tiny_config, lr=2e-4, resume=True), tmp_path / "cut")
    resumed = train(make_cfg(tiny_store, tiny_config, resume=True), tmp_path / "cut")

    a, b = load_policy(full / "pretrained_model"), load_policy(resumed / "pretrained_model")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert torch.equal(
        next(iter(load_raw_weights(full / "pretrained_model").values())),
        next(iter(load_raw_weights(resumed / "pretrained_model").values())),
    )
    # the optimizer's moments and step count carried across the restart
    a_opt = read_tensors(full / "training_state" / "optimizer_state.safetensors")
    b_opt = read_tensors(resumed / "training_state" / "optimizer_state.safetensors")
    assert set(a_opt) == set(b_opt) and any(k.endswith(".exp_avg") for k in a_opt)
    assert all(torch.equal(a_opt[k], b_opt[k]) for k in a_opt)
    assert a_opt["state.0.step"].item() == 12
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == sorted(steps)  # rows after the restart checkpoint were dropped, not duplicated


def test_training_state_round_trip_restores_optimizer_scheduler_and_scalars(tmp_path):
    """Tensors, python scalars in the optimizer state (e.g. a float `step` from older torch), the LR
    schedule's position and the step counters come back; the next step is the same as without saving."""

    def setup():
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 2)
        opt = torch.optim.AdamW(net.parameters(), lr=0.1, betas=(0.9, 0.99), weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(2, 10))
        return net, opt, sched

    def step(net, opt, sched):
        opt.zero_grad()
        net(torch.ones(4, 3)).square().sum().backward()
        opt.step()
        sched.step()

    net, opt, sched = setup()
    for _ in range(3):
        step(net, opt, sched)
    opt.state[net.weight]["visits"] = 3  # a non-tensor entry: saved as a JSON scalar
    save_training_state(tmp_path / "ts", opt, sched, step=3, ema_optimization_step=5)
    draws = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])  # after the save

    net2, opt2, sched2 = setup()
    net2.load_state_dict(net.state_dict())
    assert load_training_state(tmp_path / "ts", opt2, sched2) == (3, 5)
    again = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])  # every generator
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]
    assert opt2.state[net2.weight]["visits"] == 3
    for p, q in zip(net.parameters(), net2.parameters(), strict=True):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][key], opt2.state[q][key]), key
    assert sched2.last_epoch == 3 and sched2.get_last_lr() == sched.get_last_lr()
    step(net, opt, sched)
    step(net2, opt2, sched2)
    for p, q in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(p, q)
    (tmp_path / "ts" / "training_step.json").unlink()
    with pytest.raises(CheckpointError, match="missing .*training_step.json"):
        load_training_state(tmp_path / "ts", opt2, sched2)


def test_bad_train_settings():
    with pytest.raises(ValueError, match="num_steps"):
        TrainConfig(num_steps=0)
    with pytest.raises(ValueError, match="betas"):
        TrainConfig(betas=(0.9, 1.5))
    # the split is checked when the config is built, not when the store is read
    with pytest.raises(ValueError, match=r"val_ratio must be in \[0, 1\), got 1.5"):
        TrainConfig(val_ratio=1.5, dataset_path="/nowhere")
    with pytest.raises(ValueError, match="max_train_episodes must be >= 1"):
        TrainConfig(max_train_episodes=0, dataset_path="/nowhere")


def test_a_transformer_policy_trains_and_its_loss_falls(tmp_path, tiny_store):
    cfg = PolicyConfig(network="transformer", transformer=TransformerConfig(n_layer=1, n_emb=32, n_head=4))
    ckpt = train(make_cfg(tiny_store, cfg, num_steps=60, log_every=20, warmup_steps=5), tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.9 * losses[0]  # 0.96 -> 0.74 here (seeded)
    policy = load_policy(ckpt / "pretrained_model")
    assert policy.config.network == "transformer" and policy.config.transformer == cfg.transformer
    out = policy.predict_action_chunk(
        {"obs": torch.rand(2, 20) * 512}, generator=torch.Generator().manual_seed(0)
    )
    assert out.action.shape == (1, 8, 2) and torch.isfinite(out.action).all()
