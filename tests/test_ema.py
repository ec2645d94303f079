"""EMA of the weights: the shadow against values worked out by hand over several updates."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from parapolicy.policy.model.ema import EMA, ema_decay


class Scalar(nn.Module):
    """One trainable scalar, one frozen scalar and one buffer: every kind of state the EMA handles."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.frozen = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.register_buffer("stat", torch.zeros(()))

    def set(self, w: float, frozen: float, stat: float) -> None:
        with torch.no_grad():
            self.w.fill_(w)
            self.frozen.fill_(frozen)
            self.stat.fill_(stat)


# Model weights before updates 0..4, and the shadow after each one, worked out by hand.
# power=1, inv_gamma=1: decay(n) = 1 - 1 / (1 + s), s = max(0, n - 1) -> 0, 0, 1/2, 2/3, 3/4.
WEIGHTS = [1.0, 2.0, 4.0, 8.0, 0.0]
DECAYS = [0.0, 0.0, 1 / 2, 2 / 3, 3 / 4]
SHADOW = [
    1.0,  # copy
    2.0,  # copy
    3.0,  # 1/2 * 2 + 1/2 * 4
    14 / 3,  # 2/3 * 3 + 1/3 * 8
    3.5,  # 3/4 * 14/3 + 1/4 * 0
]
# The same with max_decay=0.6: updates 3 and 4 are capped at 0.6.
SHADOW_CAPPED = [1.0, 2.0, 3.0, 5.0, 3.0]  # 0.6 * 3 + 0.4 * 8 = 5; 0.6 * 5 + 0.4 * 0 = 3


@pytest.mark.parametrize(
    ("max_decay", "decays", "shadow"),
    [
        (0.9999, DECAYS, SHADOW),
        (0.6, [0.0, 0.0, 0.5, 0.6, 0.6], SHADOW_CAPPED),
    ],
)
def test_shadow_follows_the_hand_computed_average(max_decay, decays, shadow):
    model, ema = Scalar(), EMA(Scalar(), power=1.0, max_decay=max_decay)
    for n, w in enumerate(WEIGHTS):
        model.set(w, frozen=10.0 + n, stat=-n)
        assert ema.update(model) == pytest.approx(decays[n], abs=1e-12)
        assert ema.shadow.w.item() == pytest.approx(shadow[n], abs=1e-6), f"after update {n}"
        # frozen parameters and buffers are copied, never averaged
        assert ema.shadow.frozen.item() == 10.0 + n and ema.shadow.stat.item() == -n
    assert ema.optimization_step == len(WEIGHTS)
    assert not ema.shadow.w.requires_grad


def test_default_power_on_a_real_network(tiny_policy):
    """The reference power 0.75 on every parameter of the policy, against the blend written out."""
    shadow = type(tiny_policy)(tiny_policy.config)
    ema = EMA(shadow)
    start = {k: v.clone() for k, v in tiny_policy.network.state_dict().items()}
    ema.update(tiny_policy)
    ema.update(tiny_policy)  # two copies: shadow == model
    with torch.no_grad():
        for p in tiny_policy.network.parameters():
            p.add_(1.0)
    ema.update(tiny_policy)  # decay 1 - 2**-0.75
    d = 1 - 2**-0.75
    for name, value in shadow.network.state_dict().items():
        torch.testing.assert_close(value, d * start[name] + (1 - d) * (start[name] + 1.0), msg=name)
    # the normaliser statistics are buffers: copied
    for (name, a), (_, b) in zip(
        tiny_policy.normalizer.state_dict().items(), shadow.normalizer.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_bad_settings():
    with pytest.raises(ValueError, match="invalid EMA settings power=0.0"):
        EMA(Scalar(), power=0.0)
    with pytest.raises(ValueError, match="max_decay=1.0"):
        EMA(Scalar(), max_decay=1.0)


def test_batch_norm_parameters_are_copied_not_averaged():
    """As Diffusion Policy's EMAModel: a BatchNorm layer's affine parameters follow the model exactly (its
    running statistics, buffers, are copied too); the other parameters are averaged."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = EMA(copy.deepcopy(model), power=0.75, max_decay=0.9999)
    ema.optimization_step = 100  # a decay well above 0
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].weight.fill_(5.0)
    decay = ema.update(model)
    assert 0.5 < decay < 1
    assert torch.equal(ema.shadow[1].weight, model[1].weight)  # copied
    assert not torch.equal(ema.shadow[0].weight, model[0].weight)  # averaged


def test_inv_gamma_divides_the_step_count():
    """decay = 1 - (1 + s / inv_gamma) ** -power, s = n - 1 (hand-computed at inv_gamma 2 and 0.5)."""
    assert ema_decay(5, power=1.0, inv_gamma=2.0) == pytest.approx(1 - 1 / (1 + 4 / 2))  # 2/3
    assert ema_decay(5, power=1.0, inv_gamma=0.5) == pytest.approx(1 - 1 / (1 + 4 / 0.5))  # 8/9
