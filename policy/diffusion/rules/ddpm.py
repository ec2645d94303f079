"""DDPM: ancestral sampling with the posterior mean and `fixed_small` noise (Ho et al. 2020, eqs. 6-7).

x' = √ᾱ'β_s/(1-ᾱ)·x̂₀ + √α_s(1-ᾱ')/(1-ᾱ)·x_t + σ_i·z,   σ_i = √β̃_i (0 after the last step, where ᾱ' = 1).
Skipped steps (K < T) use the effective one-step β_s = 1 - ᾱ/ᾱ'. Torch-free at import (see `_base.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from parapolicy.policy.diffusion.rules._base import Coef, Levels, RuleCoefficients, UpdateRule

if TYPE_CHECKING:
    from torch import Tensor


def coefficients(lv: Levels) -> RuleCoefficients:
    """Posterior-mean weights of x̂₀ and x_t, and the noise std σ_i (each (K,))."""
    a, a_prev = lv.alpha_bar, lv.alpha_bar_prev
    alpha_s = a / a_prev  # (K,) α_s
    beta_s = 1.0 - alpha_s  # (K,) β_s
    sigma = lv.posterior_variance.sqrt()
    sigma[-1] = 0.0  # no noise after the last step (β̃ = 0 there already; made explicit)
    return RuleCoefficients(
        {
            "posterior_coef_x0": a_prev.sqrt() * beta_s / (1.0 - a),
            "posterior_coef_xt": alpha_s.sqrt() * (1.0 - a_prev) / (1.0 - a),
            "sigma": sigma,
        }
    )


def update(
    coef: Coef, x_t: Tensor, x0: Tensor, eps: Tensor | None, noise: Tensor | None, prev_x0: Tensor | None
) -> Tensor:
    """Posterior mean (Ho et al. 2020, eq. 7) plus the ancestral noise σ_i·z (Alg. 2, line 4)."""
    prev = coef("posterior_coef_xt") * x_t
    prev = prev.addcmul_(coef("posterior_coef_x0"), x0)  # fused: fewer kernels
    if noise is not None:
        prev = prev.addcmul_(coef("sigma"), noise)
    return prev


RULE = UpdateRule(
    kind="ddpm",
    columns=("posterior_coef_x0", "posterior_coef_xt", "sigma"),
    coefficients=coefficients,
    update=update,
    is_stochastic=True,
    always_lands_on_clean=True,
)
