"""Tests for policy/model/normalizer.py: fit, round trip, constant dimensions, state dict, errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from parapolicy.policy.model.normalizer import MinMaxNormalizer


def make_data(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, size=(500, 20)) * np.logspace(-1, 2.5, 20) + np.linspace(0, 500, 20)  # (N, 20)
    action = rng.uniform(0, 512, size=(500, 2))  # (N, 2)
    return {"obs": obs, "action": action}


def test_fit_maps_min_max_to_minus_one_one_and_round_trips() -> None:
    data = make_data()
    norm = MinMaxNormalizer({"obs": 20, "action": 2}).fit(data)
    for key, raw in data.items():
        x = torch.from_numpy(raw)  # float64 keeps the check tight
        y = norm.normalize(key, x)
        assert y.dtype == torch.float64 and y.shape == x.shape
        # the statistics are float32 buffers (as the reference), so the extremes land within float32 error
        ones = torch.ones(raw.shape[1], dtype=torch.float64)
        torch.testing.assert_close(y.min(dim=0).values, -ones, rtol=0, atol=1e-4)
        torch.testing.assert_close(y.max(dim=0).values, ones, rtol=0, atol=1e-4)
        torch.testing.assert_close(norm.unnormalize(key, y), x, rtol=1e-6, atol=1e-6)
        # float32 path, batched leading axes
        x32 = x.float().reshape(5, 100, -1)
        torch.testing.assert_close(norm.unnormalize(key, norm.normalize(key, x32)), x32, rtol=1e-5, atol=1e-3)
    stats = norm.get_stats("action")
    lo, hi = data["action"].min(0), data["action"].max(0)
    np.testing.assert_allclose(stats["scale"].numpy(), 2 / (hi - lo), rtol=1e-6)
    np.testing.assert_allclose(stats["offset"].numpy(), -1 - 2 / (hi - lo) * lo, rtol=1e-5)


def test_numpy_and_integer_inputs() -> None:
    norm = MinMaxNormalizer({"action": 2}).fit({"action": torch.tensor([[0.0, 10.0], [4.0, 30.0]])})
    y = norm.normalize("action", np.array([[2, 20]]))
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    torch.testing.assert_close(y, torch.zeros(1, 2))


def test_constant_and_near_constant_dimensions() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 3))
    x[:, 1] = 7.0  # exactly constant
    x[:, 2] = -3.0 + rng.uniform(0, 5e-5, size=100)  # range below 1e-4
    norm = MinMaxNormalizer.from_data({"obs": x})
    stats = norm.get_stats("obs")
    assert torch.isfinite(stats["scale"]).all() and torch.isfinite(stats["offset"]).all()
    assert stats["scale"][1] == 1 and stats["scale"][2] == 1
    assert stats["offset"][1] == -7.0
    torch.testing.assert_close(stats["offset"][2], torch.tensor(-(x[:, 2].max() + x[:, 2].min()) / 2).float())
    y = norm.normalize("obs", torch.from_numpy(x))
    torch.testing.assert_close(y[:, 1], torch.zeros(100, dtype=torch.float64))
    assert y[:, 2].abs().max() <= 5e-5  # centred at 0, not scaled
    assert y[:, 0].min() == pytest.approx(-1) and y[:, 0].max() == pytest.approx(1)
    torch.testing.assert_close(norm.unnormalize("obs", y), torch.from_numpy(x), rtol=1e-6, atol=1e-6)
    # A range just above the threshold is scaled.
    z = np.stack([np.zeros(10), np.linspace(0, 2e-4, 10)], axis=1)
    assert MinMaxNormalizer.from_data({"a": z}).get_stats("a")["scale"][1] == pytest.approx(1e4, rel=1e-4)


def test_errors() -> None:
    norm = MinMaxNormalizer({"obs": 3, "action": 2})
    with pytest.raises(RuntimeError, match="before fit"):
        norm.normalize("obs", torch.zeros(3))
    with pytest.raises(RuntimeError, match="before fit"):
        norm.unnormalize("action", torch.zeros(2))
    with pytest.raises(KeyError, match="unknown normaliser key 'img'"):
        norm.fit({"img": np.zeros((4, 3))})
    norm.fit({"obs": np.arange(12.0).reshape(4, 3)})
    assert norm.is_fitted("obs") and not norm.is_fitted("action")
    with pytest.raises(KeyError, match="unknown normaliser key"):
        norm.normalize("state", torch.zeros(3))
    with pytest.raises(ValueError, match=r"expected shape \(\.\.\., 3\)"):
        norm.normalize("obs", torch.zeros(4))
    with pytest.raises(ValueError, match="non-finite"):
        norm.fit({"action": np.array([[0.0, 1.0], [np.nan, 2.0]])})
    with pytest.raises(ValueError, match="non-finite"):
        norm.fit({"action": np.array([[0.0, 1.0], [np.inf, 2.0]])})
    with pytest.raises(ValueError, match="empty"):
        norm.fit({"action": np.zeros((0, 2))})
    with pytest.raises(ValueError, match="non-finite"):
        norm.fit({"action": np.array([[-1e308, 0.0], [1e308, 1.0]])})  # max - min overflows
    assert not norm.is_fitted("action")  # failed fits leave no statistics behind
    with pytest.raises(ValueError, match="'.'"):
        MinMaxNormalizer({"obs.x": 3})


class Policy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(2, 2)
        self.normalizer = MinMaxNormalizer({"obs": 20, "action": 2})


def test_state_dict_round_trip_inside_a_model() -> None:
    data = make_data(2)
    policy = Policy()
    policy.normalizer.fit(data)
    state = policy.state_dict()
    expected_keys = {"normalizer.stats.obs.scale", "normalizer.stats.action.offset"}
    expected_keys |= {"normalizer.stats.obs.fitted", "normalizer.stats.action.min"}
    assert expected_keys <= set(state)
    # torch (weights_only) and safetensors round trips
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    for loaded in (torch.load(buf, weights_only=True), st_load(st_save(state))):
        fresh = Policy()
        assert not fresh.normalizer.is_fitted("obs")
        fresh.load_state_dict(loaded)
        assert fresh.normalizer.is_fitted("obs") and fresh.normalizer.is_fitted("action")
        x = torch.from_numpy(data["obs"][:7]).float()
        expected = policy.normalizer.normalize("obs", x)
        torch.testing.assert_close(fresh.normalizer.normalize("obs", x), expected)


def test_loading_unusable_statistics_fails() -> None:
    norm = MinMaxNormalizer.from_data({"action": make_data()["action"]})
    state = norm.state_dict()
    bad = dict(state)
    bad["stats.action.scale"] = torch.tensor([float("nan"), 1.0])
    with pytest.raises(ValueError, match="non-finite"):
        MinMaxNormalizer({"action": 2}).load_state_dict(bad)
    bad["stats.action.scale"] = torch.tensor([0.0, 1.0])
    with pytest.raises(ValueError, match="zero scale"):
        MinMaxNormalizer({"action": 2}).load_state_dict(bad)
    # An unfitted state dict loads, but the key stays unusable.
    empty = MinMaxNormalizer({"action": 2})
    empty.load_state_dict(MinMaxNormalizer({"action": 2}).state_dict())
    with pytest.raises(RuntimeError, match="before fit"):
        empty.normalize("action", torch.zeros(2))
