"""DDIM with η = 0 (Song et al. 2021, eq. 12): x' = √ᾱ'·x̂₀ + √(1-ᾱ')·ε̂, deterministic.

ε̂ comes from the unclipped prediction, as diffusers' DDIMScheduler. Torch-free at import (see `_base.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from parapolicy.policy.diffusion.rules._base import Coef, Levels, RuleCoefficients, UpdateRule

if TYPE_CHECKING:
    from torch import Tensor


def coefficients(lv: Levels) -> RuleCoefficients:
    """√ᾱ' and √(1-ᾱ') of each step's landing level (each (K,))."""
    return RuleCoefficients(
        {
            "sqrt_alpha_bar_prev": lv.alpha_bar_prev.sqrt(),
            "sqrt_one_minus_alpha_bar_prev": (1.0 - lv.alpha_bar_prev).sqrt(),
        }
    )


def update(
    coef: Coef, x_t: Tensor, x0: Tensor, eps: Tensor | None, noise: Tensor | None, prev_x0: Tensor | None
) -> Tensor:
    """x' = √ᾱ'·x̂₀ + √(1-ᾱ')·ε̂."""
    assert eps is not None
    prev = coef("sqrt_alpha_bar_prev") * x0
    return prev.addcmul_(coef("sqrt_one_minus_alpha_bar_prev"), eps)  # fused: fewer kernels


RULE = UpdateRule(
    kind="ddim",
    columns=("sqrt_alpha_bar_prev", "sqrt_one_minus_alpha_bar_prev"),
    coefficients=coefficients,
    update=update,
    needs_eps=True,
)
