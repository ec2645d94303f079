"""The update-rule registry: a rule is one module (or one `register_rule` call), nothing else changes."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

import parapolicy.policy.diffusion.rules as rules_pkg
from parapolicy.policy.config import SAMPLER_KINDS, SamplerConfig
from parapolicy.policy.diffusion.picard import sample_picard
from parapolicy.policy.diffusion.rules import (
    RULES,
    Coef,
    Levels,
    RuleCoefficients,
    UpdateRule,
    get_rule,
    register_rule,
)
from parapolicy.policy.diffusion.schedules import make_alphas_cumprod, make_step_table, make_timesteps
from parapolicy.policy.diffusion.sequential import draw_noise, sample_sequential
from parapolicy.policy.diffusion.step_table import SHARED_COLUMNS


def test_sampler_kinds_are_the_rule_modules() -> None:
    modules = [m.name for m in pkgutil.iter_modules(rules_pkg.__path__) if not m.name.startswith("_")]
    kinds = {importlib.import_module(f"{rules_pkg.__name__}.{m}").RULE.kind for m in modules}
    assert set(SAMPLER_KINDS) == kinds == {"ddpm", "ddim", "dpmsolver++"}
    for kind in SAMPLER_KINDS:
        assert SamplerConfig(kind=kind).kind == kind
        tab = make_step_table(make_alphas_cumprod("linear", 20), make_timesteps(20, 5), kind=kind)
        own = tuple(c for c in get_rule(kind).columns if c not in SHARED_COLUMNS)  # ddpm's sigma is shared
        assert tab.column_names == SHARED_COLUMNS + own
        assert tab.coefficients.shape == (5, len(tab.column_names))


def test_unknown_and_duplicate_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown sampler kind 'euler'; registered: "):
        get_rule("euler")
    with pytest.raises(ValueError, match="sampler.kind must be one of"):
        SamplerConfig(kind="euler")
    with pytest.raises(ValueError, match="'ddpm' is already registered"):
        register_rule(UpdateRule("ddpm", (), RULES["ddim"].coefficients, RULES["ddim"].update))
    with pytest.raises(TypeError, match="expected an UpdateRule"):
        register_rule("ddpm")  # type: ignore[arg-type]


# A fourth rule, written here as a rule module would be: a stochastic two-step rule. It is DDIM's
# update written in x_t and x̂₀, with x̂₀ replaced by a blend of this step's and the previous step's
# prediction, plus a little ancestral noise. Only the registry knows about it.
def _toy_coefficients(lv: Levels) -> RuleCoefficients:
    a, a_prev = lv.alpha_bar, lv.alpha_bar_prev
    ratio = ((1.0 - a_prev) / (1.0 - a)).sqrt()  # σ'/σ
    x0_weight = a_prev.sqrt() - ratio * a.sqrt()
    blend = torch.full_like(a, 0.25)
    blend[0] = 0.0  # step 0 has no history: first order
    sigma = 0.1 * lv.posterior_variance.sqrt()
    sigma[-1] = 0.0
    columns = {
        "toy_x": ratio,
        "toy_x0": x0_weight * (1.0 - blend),
        "toy_x0_prev": x0_weight * blend,
        "sigma": sigma,
    }
    return RuleCoefficients(columns, (1,) + (2,) * (lv.num_steps - 1))


def _toy_update(
    coef: Coef, x_t: Tensor, x0: Tensor, eps: Tensor | None, noise: Tensor | None, prev_x0: Tensor | None
) -> Tensor:
    prev = coef("toy_x") * x_t + coef("toy_x0") * x0
    if prev_x0 is not None:
        prev = prev + coef("toy_x0_prev") * prev_x0
    if noise is not None:
        prev = prev + coef("sigma") * noise
    return prev


TOY = UpdateRule(
    kind="toy",
    columns=("toy_x", "toy_x0", "toy_x0_prev", "sigma"),
    coefficients=_toy_coefficients,
    update=_toy_update,
    is_stochastic=True,
    uses_history=True,
)


@pytest.fixture
def toy_rule() -> Iterator[UpdateRule]:
    register_rule(TOY)
    try:
        yield TOY
    finally:
        RULES.pop(TOY.kind)


def _mixture_denoiser(x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
    """A smooth nonlinear ε-predictor that depends on t and the conditioning (no network)."""
    scale = 1.0 + t.to(x.dtype).view(-1, 1, 1) / 50.0
    shift = 0.0 if cond is None else cond[:, :1].unsqueeze(-1)
    return torch.tanh(scale * x + shift) * 0.7


def test_a_registered_rule_samples_sequentially_and_with_picard(toy_rule: UpdateRule) -> None:
    assert "toy" in RULES and "toy" not in SAMPLER_KINDS  # registered at run time, shipped list unchanged
    K = 30
    tab = make_step_table(
        make_alphas_cumprod("squaredcos_cap_v2", 100), make_timesteps(100, K), kind="toy", dtype=torch.float64
    )
    assert tab.kind == "toy" and tab.is_stochastic and tab.uses_history
    assert tab.column_names == SHARED_COLUMNS + ("toy_x", "toy_x0", "toy_x0_prev")
    assert bool((tab.sigma[:-1] > 0).all()) and tab.orders[0] == 1
    gen = torch.Generator().manual_seed(0)
    x_T, noise = draw_noise(tab, (3, 8, 2), gen, dtype=torch.float64)
    cond = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    seq = sample_sequential(_mixture_denoiser, x_T, tab, noise, cond, return_trajectory=True)
    for window in (1, 4, K):
        par = sample_picard(_mixture_denoiser, x_T, tab, noise, cond, window=window, tol=0.0)
        assert par.all_converged
        torch.testing.assert_close(par.trajectory, seq.trajectory, rtol=0, atol=1e-12)
    # the noise enters: another draw gives another sample
    other = sample_sequential(_mixture_denoiser, x_T, tab, torch.zeros_like(noise), cond)
    assert not torch.allclose(other.sample, seq.sample)


def test_a_rule_must_return_its_declared_columns(toy_rule: UpdateRule) -> None:
    bad = UpdateRule("toy_bad", ("missing",), _toy_coefficients, _toy_update)
    register_rule(bad)
    try:
        with pytest.raises(ValueError, match="rule 'toy_bad' returned columns"):
            make_step_table(make_alphas_cumprod("linear", 10), make_timesteps(10, 4), kind="toy_bad")
    finally:
        RULES.pop("toy_bad")
