"""What an update rule is: its coefficient columns, its step, and two flags the samplers read.

Torch-free at import time (tensors are only annotated): `parapolicy.policy.config` reads the rule names
without loading torch. A rule works on tensors through their methods only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["Coef", "Levels", "RuleCoefficients", "UpdateRule"]

Coef = Callable[[str], "Tensor"]
"""``coef(name)``: the rule's column ``name`` at the current step(s), shaped to broadcast against x_t."""


@dataclass(frozen=True)
class Levels:
    """The noise levels of K inference steps, in float64 on the CPU (what every rule builds from).

    Notation: ᾱ = ᾱ(τ_i), ᾱ' = ᾱ(τ_{i+1}) (the level step i lands on), α_s = ᾱ/ᾱ', β_s = 1 - α_s.

    Attributes:
        alpha_bar: (K,) ᾱ.
        alpha_bar_prev: (K,) ᾱ'; after the last step 1.0 (clean data) or ᾱ_0.
        posterior_variance: (K,) β̃ = β_s·(1-ᾱ')/(1-ᾱ), the DDPM posterior variance (0 where ᾱ' = 1).
    """

    alpha_bar: Tensor
    alpha_bar_prev: Tensor
    posterior_variance: Tensor

    @property
    def num_steps(self) -> int:
        """K."""
        return int(self.alpha_bar.shape[0])

    @property
    def lands_on_clean(self) -> bool:
        """True when the last step lands on ᾱ' = 1."""
        return float(self.alpha_bar_prev[-1]) == 1.0


@dataclass(frozen=True)
class RuleCoefficients:
    """A rule's per-step columns (each (K,) float64) and, for multistep rules, each step's order."""

    columns: Mapping[str, Tensor]
    orders: tuple[int, ...] | None = None


@dataclass(frozen=True)
class UpdateRule:
    """One reverse-step update rule (DDPM, DDIM, DPM-Solver++, ...), registered by its module.

    Attributes:
        kind: the name configs use (``SamplerConfig.kind``).
        columns: the names of the per-step coefficient columns the rule adds to the `StepTable`.
        coefficients: ``Levels -> RuleCoefficients`` with exactly ``columns`` (float64, CPU). A
            stochastic rule also returns ``"sigma"``, the std of the noise its step adds (the table's
            shared ``sigma`` column, zeros otherwise).
        update: ``(coef, x_t, x0, eps, noise, prev_x0) -> x'``: the step itself, from the (clipped)
            data prediction ``x0``, the noise prediction ``eps`` (None unless `needs_eps`), the step
            noise (None unless `is_stochastic`) and the previous step's x̂₀ (None unless `uses_history`,
            or at a first-order step). It may update its first intermediate in place but never an input.
        is_stochastic: the step adds pre-drawn noise σ_i·z.
        uses_history: step i also needs the x̂₀ of step i-1 (a multistep method).
        needs_eps: the update reads ε̂ (taken from the unclipped prediction, as diffusers' DDIM).
        always_lands_on_clean: the last step lands on ᾱ' = 1 whatever ``set_alpha_to_one`` says (DDPM).
    """

    kind: str
    columns: tuple[str, ...]
    coefficients: Callable[[Levels], RuleCoefficients]
    update: Callable[[Coef, Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None], Tensor]
    is_stochastic: bool = False
    uses_history: bool = False
    needs_eps: bool = False
    always_lands_on_clean: bool = False
