"""The denoiser interface seen by every sampler.

A denoiser maps a flat batch of noisy samples, their timesteps and their conditioning to the model
output: `denoise(x: (N, H, D), t: (N,), cond: (N, C) | None) -> (N, H, D)`. The samplers never know
what network runs or where: a single-device denoiser is the network itself (`ConditionalUnet1d` already
has this signature) or a closure over it; device layouts live in `parapolicy.policy.runtime`.

Part of the diffusion core: imports torch only.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

__all__ = ["Denoiser"]


@runtime_checkable
class Denoiser(Protocol):
    """Callable model wrapper used by every sampler."""

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """Predict the model output (ε, x₀ or v) for a flat batch.

        Args:
            x: (N, H, D) noisy samples.
            t: (N,) int64 training timesteps of each row.
            cond: (N, C) conditioning of each row, or None.

        Returns:
            (N, H, D) model output on the device of `x`.
        """
        ...
