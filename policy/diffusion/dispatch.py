"""Dispatch sampler settings to the sequential or the Picard sampler (no hydra, no config import).

`run_sampler` takes any object with the fields of `SamplerSettings` (`parapolicy.policy.config`'s
`SamplerConfig` is one); the execution order is its `is_parallel`, decided in that one place.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from parapolicy.policy.diffusion.denoiser import Denoiser
from parapolicy.policy.diffusion.inpaint import Inpaint
from parapolicy.policy.diffusion.picard import sample_picard
from parapolicy.policy.diffusion.sequential import SampleResult, sample_sequential
from parapolicy.policy.diffusion.step_table import StepTable

__all__ = ["SamplerSettings", "run_sampler"]


class SamplerSettings(Protocol):
    """What `run_sampler` reads from the sampler settings (see `SamplerConfig` for their meaning)."""

    @property
    def is_parallel(self) -> bool:
        """True for a windowed (Picard) execution order, False for the sequential one."""
        ...

    window: int | str
    tol: float
    max_iters: int | None
    abs_floor: float
    on_max_iters: str
    refill: str
    update: str


def run_sampler(
    sampler: SamplerSettings,
    denoise: Denoiser,
    x_T: Tensor,
    table: StepTable,
    noise: Tensor | None,
    cond: Tensor | None,
    *,
    x0_guess: Tensor | None = None,
    return_trajectory: bool = False,
    inpaint: Inpaint | None = None,
    coarse_jacobian: Tensor | None = None,
) -> SampleResult:
    """Sample in the execution order ``sampler.is_parallel`` says (the update rule comes from ``table``).

    Args:
        sampler: the sampler settings (e.g. a `SamplerConfig`; ``window`` resolved to an int).
        denoise: the denoiser callable ``(N, H, D), (N,), (N, C) -> (N, H, D)``.
        x_T: (B, H, D) initial sample.
        table: the step table of the sampler's update rule, on ``x_T``'s device.
        noise: (K, B, H, D) pre-drawn step noise.
        cond: (B, C) conditioning.
        x0_guess: Picard guess of the sample (B, H, D) (warm start); ignored by the sequential sampler.
        return_trajectory: the sequential sampler also returns its (K+1, B, H, D) trajectory (Picard
            always does).
        inpaint: known rows of the sample (see `inpaint`), or None.
        coarse_jacobian: (K, H·D, H·D) ∂x̂₀/∂x per step for the Parareal update's linear coarse
            model (`coarse.x0_jacobian`), or None; ignored by the sequential sampler.
    """
    if not sampler.is_parallel:
        return sample_sequential(
            denoise, x_T, table, noise, cond, return_trajectory=return_trajectory, inpaint=inpaint
        )
    if not isinstance(sampler.window, int):
        raise ValueError(f"sampler.window must be resolved to an integer first, got {sampler.window!r}")
    return sample_picard(
        denoise,
        x_T,
        table,
        noise,
        cond,
        window=sampler.window,
        tol=sampler.tol,
        max_iters=sampler.max_iters,
        abs_floor=sampler.abs_floor,
        on_max_iters=sampler.on_max_iters,
        x0_guess=x0_guess,
        refill=sampler.refill,
        update=sampler.update,
        inpaint=inpaint,
        coarse_jacobian=coarse_jacobian,
    )
