"""Training actually learns: parameters move by the optimizer's first step, a tiny dataset is fitted,
and the periodic closed-loop evaluation runs on the EMA weights of its step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from parapolicy.policy.config import PolicyConfig, SamplerConfig
from parapolicy.policy.control.evaluation import EvalConfig
from parapolicy.policy.control.rollout import evaluate_policy
from parapolicy.policy.data.replay_store import ReplayStore
from parapolicy.policy.model.policy import DiffusionPolicy
from parapolicy.policy.model.pretrained import load_policy, load_raw_weights
from parapolicy.policy.train import TrainConfig, train


def metric_rows(run, key: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if key in r]


@pytest.fixture(scope="module")
def ramp_store(tmp_path_factory):
    """4 episodes of 40 steps where the action is the agent position plus (40, 40): learnable exactly."""
    path = tmp_path_factory.mktemp("ramp") / "ramp.zarr"
    rng = np.random.default_rng(0)
    store = ReplayStore.create(path)
    for e in range(4):
        s = np.linspace(0, 1, 40, dtype=np.float32)[:, None]  # (n, 1)
        pos = np.concatenate([100 + 300 * s, np.full_like(s, 200 + 100 * e)], 1)  # (n, 2)
        store.append_episode(
            {
                "state": np.concatenate([pos, np.zeros((40, 3), np.float32)], 1),
                "keypoint": np.broadcast_to(rng.uniform(0, 512, (1, 9, 2)), (40, 9, 2)).astype(np.float32),
                "action": pos + 40,
            },
            seed=e,
        )
    store.close()
    return path


def quiet(store, policy: PolicyConfig, **kw) -> TrainConfig:
    base = {"dataset_path": str(store), "policy": policy, "val_ratio": 0.0, "progress": False}
    return TrainConfig(**{**base, **kw})


def test_one_step_moves_every_parameter_by_the_adam_step(tmp_path, ramp_store, tiny_config):
    """Adam's first step is lr * g / (|g| + eps) = lr * sign(g) per coordinate (bias-corrected moments),
    after AdamW's decoupled decay w *= 1 - lr * wd. With warm-up 0 the first step runs at the peak lr."""
    lr, wd = 1e-3, 1e-6
    cfg = quiet(ramp_store, tiny_config, num_steps=1, lr=lr, weight_decay=wd, warmup_steps=0, val_every=0)
    ckpt = train(cfg, tmp_path / "run")
    torch.manual_seed(cfg.seed)  # train() seeds the initialisation with cfg.seed
    start = DiffusionPolicy(tiny_config).network.state_dict()
    trained = load_raw_weights(ckpt / "pretrained_model")
    for name, w0 in start.items():
        if not w0.is_floating_point():
            continue
        step = trained[name] - w0 * (1 - lr * wd)  # (...) minus the decay: -lr * sign(g)
        assert step.abs().max() <= lr * 1.0001, name
        assert (step.abs() > 0.5 * lr).float().mean() > 0.9, f"{name} did not move by ~lr"
    # the EMA's first update copies (decay 0): the shipped weights are the trained ones
    ema = load_policy(ckpt / "pretrained_model").network.state_dict()
    assert all(torch.equal(ema[k], trained[k]) for k in trained)


def test_a_tiny_dataset_is_fitted(tmp_path, ramp_store, tiny_config):
    """200 steps bring the denoising loss far below its start (about 0.98 -> 0.17 when written)."""
    cfg = quiet(
        ramp_store,
        tiny_config,
        num_steps=200,
        batch_size=16,
        lr=2e-3,
        warmup_steps=10,
        log_every=25,
        val_every=0,
        checkpoint_every=0,
    )
    ckpt = train(cfg, tmp_path / "run")
    losses = [r["loss"] for r in metric_rows(tmp_path / "run", "loss")]
    assert len(losses) == 8 and losses[0] > 0.7
    assert losses[-1] < 0.4 * losses[0], losses
    # the checkpoint holds the EMA, which lags the raw weights once the decay is above 0
    ema = load_policy(ckpt / "pretrained_model").network.state_dict()
    raw = load_raw_weights(ckpt / "pretrained_model")
    assert any(not torch.equal(ema[k], raw[k]) for k in raw)


def test_periodic_evaluation_scores_the_ema_policy_of_its_step(tmp_path, tiny_store, tiny_config):
    eval_cfg = EvalConfig(n_episodes=2, batch_size=2, max_steps=8, max_videos=0, progress=False)
    sampler = SamplerConfig(kind="ddim", num_inference_steps=4)
    cfg = quiet(
        tiny_store,
        tiny_config,
        num_steps=4,
        batch_size=8,
        val_every=0,
        checkpoint_every=2,
        eval_every=2,
        eval=eval_cfg,
        eval_sampler=sampler,
    )
    train(cfg, tmp_path / "run")
    rows = metric_rows(tmp_path / "run", "eval")
    assert [r["step"] for r in rows] == [2, 4]
    for row in rows:
        ckpt = tmp_path / "run" / "checkpoints" / f"{row['step']:06d}" / "pretrained_model"
        expected = evaluate_policy(load_policy(ckpt, sampler=sampler), eval_cfg)["aggregated"]
        assert row["eval"]["n_episodes"] == 2
        for key in ("mean_score", "avg_sum_reward", "mean_steps", "mean_final_coverage", "n_successes"):
            assert row["eval"][key] == expected[key], key
