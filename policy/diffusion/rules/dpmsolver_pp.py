"""DPM-Solver++(2M): the data-prediction multistep solver (Lu et al. 2022, Alg. 2).

With α = √ᾱ, σ = √(1-ᾱ), λ = log α - log σ, h_i = λ' - λ and r = h_{i-1}/h_i::

    x' = (σ'/σ)·x_t + α'(1-e^{-h})·[(1 + 1/(2r))·x̂₀(τ_i) - 1/(2r)·x̂₀(τ_{i-1})]

A first-order step drops the bracket's second term and the 1/(2r). Step 0 is first order (no history);
the last step is first order when it lands on ᾱ' = 1 (λ' = ∞) or when K < 15 (diffusers'
`lower_order_final`). Every other step is second order and uses the x̂₀ of the previous step.
Torch-free at import (see `_base.py`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from parapolicy.policy.diffusion.rules._base import Coef, Levels, RuleCoefficients, UpdateRule

if TYPE_CHECKING:
    from torch import Tensor

LOWER_ORDER_FINAL_BELOW = 15  # diffusers' lower_order_final applies to schedules shorter than this


def coefficients(lv: Levels) -> RuleCoefficients:
    """λ, λ', the weights of x_t, x̂₀(τ_i) and x̂₀(τ_{i-1}) (each (K,)), and each step's order."""
    a, a_prev, K = lv.alpha_bar, lv.alpha_bar_prev, lv.num_steps
    alpha, sig = a.sqrt(), (1.0 - a).sqrt()
    alpha_p, sig_p = a_prev.sqrt(), (1.0 - a_prev).sqrt()
    lam = alpha.log() - sig.log()  # (K,)
    lam_p = (alpha_p.log() - sig_p.log()).where(sig_p > 0, sig_p.new_full(sig_p.shape, math.inf))  # (K,)
    h = lam_p - lam  # (K,) > 0; +inf where ᾱ' = 1
    one_minus_exp = -(-h).expm1()  # (K,) 1 - e^{-h}, exactly 1 where h = inf
    coef_x0 = alpha_p * one_minus_exp
    coef_x0_prev = a.new_zeros(K)
    orders = [1] * K
    last_first_order = lv.lands_on_clean or K < LOWER_ORDER_FINAL_BELOW
    for i in range(1, K - 1 if last_first_order else K):
        orders[i] = 2
        half_inv_r = 0.5 * float(h[i] / h[i - 1])  # 1/(2r), r = h_{i-1}/h_i
        coef_x0[i] = alpha_p[i] * one_minus_exp[i] * (1.0 + half_inv_r)
        coef_x0_prev[i] = -alpha_p[i] * one_minus_exp[i] * half_inv_r
    columns = {
        "lambda_": lam,
        "lambda_prev": lam_p,
        "dpm_coef_x": sig_p / sig,
        "dpm_coef_x0": coef_x0,
        "dpm_coef_x0_prev": coef_x0_prev,
    }
    return RuleCoefficients(columns, tuple(orders))


def update(
    coef: Coef, x_t: Tensor, x0: Tensor, eps: Tensor | None, noise: Tensor | None, prev_x0: Tensor | None
) -> Tensor:
    """x' = (σ'/σ)·x_t + c₀·x̂₀(τ_i) [+ c₋₁·x̂₀(τ_{i-1}) when the history is given]."""
    prev = (coef("dpm_coef_x") * x_t).addcmul_(coef("dpm_coef_x0"), x0)  # fused: fewer kernels
    if prev_x0 is not None:
        prev = prev.addcmul_(coef("dpm_coef_x0_prev"), prev_x0)
    return prev


RULE = UpdateRule(
    kind="dpmsolver++",
    columns=("lambda_", "lambda_prev", "dpm_coef_x", "dpm_coef_x0", "dpm_coef_x0_prev"),
    coefficients=coefficients,
    update=update,
    uses_history=True,
)
