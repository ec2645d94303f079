"""Dispatch a `SamplerConfig` to the sequential or the Picard sampler (no hydra)."""

from __future__ import annotations

from torch import Tensor

from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.diffusion.denoiser import Denoiser
from parapolicy.policy.diffusion.picard import sample_picard
from parapolicy.policy.diffusion.schedules import StepTable
from parapolicy.policy.diffusion.sequential import SampleResult, sample_sequential


def run_sampler(
    sampler: SamplerConfig,
    denoise: Denoiser,
    x_T: Tensor,
    table: StepTable,
    noise: Tensor | None,
    cond: Tensor | None,
    *,
    x0_guess: Tensor | None = None,
    return_trajectory: bool = False,
) -> SampleResult:
    """Sample with the execution order ``sampler.algorithm`` (the update rule comes from ``table``).

    Args:
        sampler: the sampler settings.
        denoise: the denoiser callable ``(N, H, D), (N,), (N, C) -> (N, H, D)``.
        x_T: (B, H, D) initial sample.
        table: the step table of ``sampler.kind``, on ``x_T``'s device.
        noise: (K, B, H, D) pre-drawn step noise.
        cond: (B, C) conditioning.
        x0_guess: Picard guess of the sample (B, H, D) (warm start); ignored by the sequential sampler.
        return_trajectory: the sequential sampler also returns its (K+1, B, H, D) trajectory (Picard
            always does).
    """
    if sampler.algorithm == "sequential":
        return sample_sequential(denoise, x_T, table, noise, cond, return_trajectory=return_trajectory)
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
    )
