"""Warm start of the Picard sampler across control steps (no hydra).

After a control step executes Ta actions, the next plan covers a horizon shifted by Ta rows. The
previous step's converged sample (the last slot of its trajectory, (B, H, Da)) shifted by Ta along the
horizon, with the tail rows repeating the last old row, is a guess of the next sample. The Picard
sampler takes it as ``x0_guess``: its first window is rolled out from the new x_T with that x̂₀ held
fixed, under the new chunk's own noise. The Picard fixed point does not depend on the initial guess, so
the sample is exactly the one sequential sampling gives for the same noise; only the iteration count
changes.

Shifting the whole previous trajectory (every denoising slot) instead, the guess the literature
suggests, was measured worse than a cold start on the shipped policy (docs/benchmarks.md): the late,
low-noise slots of the new trajectory must match to ~tol·σ and the old ones were built with other
noise.

Common random numbers (``crn``) make the guess better at the high-noise slots: the new x_T and step
noise reuse the old ones shifted the same way, with fresh draws for the tail rows. This changes the
noise the sample is drawn with (it stays standard normal and independent of the observation), and the
sequential baseline must be given the same noise to compare.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def shift_rows(x: Tensor, shift: int, fill: Tensor | None = None) -> Tensor:
    """Shift ``x`` (..., H, D) by ``shift`` rows toward the start of the horizon.

    Args:
        x: (..., H, D) tensor.
        shift: rows to drop at the start (0 <= shift <= H).
        fill: (..., shift, D) values for the freed tail rows; by default the last row is repeated.

    Returns:
        (..., H, D) shifted tensor.
    """
    H = x.shape[-2]
    if not 0 <= shift <= H:
        raise ValueError(f"shift must be in [0, {H}], got {shift}")
    if shift == 0:
        return x.clone()
    head = x[..., shift:, :]  # (..., H - shift, D)
    if fill is None:
        fill = x[..., -1:, :].expand(*x.shape[:-2], shift, x.shape[-1])  # repeat the last row
    elif tuple(fill.shape[-2:]) != (shift, x.shape[-1]):
        raise ValueError(f"fill must end in {(shift, x.shape[-1])}, got {tuple(fill.shape)}")
    return torch.cat([head, fill], dim=-2)


def warm_start_guess(previous_sample: Tensor, shift: int) -> Tensor:
    """The Picard ``x0_guess`` (B, H, D) from the previous converged sample (B, H, D) in normalised units.

    ``shift`` is the number of rows executed since that sample was requested (Ta in lockstep).
    """
    return shift_rows(previous_sample, shift)


def common_random_numbers(
    x_T: Tensor, noise: Tensor, n_action_steps: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """The previous chunk's noise shifted by Ta rows, with fresh standard-normal draws for the tail.

    Args:
        x_T: (B, H, D) previous initial sample.
        noise: (K, B, H, D) previous step noise.
        n_action_steps: Ta.
        generator: CPU generator for the fresh tail rows.

    Returns:
        (x_T, noise) for the next chunk, same shapes, on the input device.
    """
    B, H, D = x_T.shape
    K = noise.shape[0]
    tail_x = torch.randn((B, n_action_steps, D), generator=generator).to(x_T)  # (B, Ta, D)
    tail_n = torch.randn((K, B, n_action_steps, D), generator=generator).to(noise)  # (K, B, Ta, D)
    return shift_rows(x_T, n_action_steps, tail_x), shift_rows(noise, n_action_steps, tail_n)


@dataclass(frozen=True)
class PreviousChunk:
    """What the next chunk of the same batch reuses from the previous one (normalised units).

    Attributes:
        sample: (B, H, D) the previous converged sample.
        x_T: (B, H, D) its initial sample.
        noise: (K, B, H, D) its step noise.
    """

    sample: Tensor
    x_T: Tensor
    noise: Tensor


def next_chunk_inputs(
    previous: PreviousChunk, shift: int, crn: bool, generator: torch.Generator | None = None
) -> tuple[tuple[Tensor, Tensor] | None, Tensor]:
    """The warm start of the next chunk: the one place that turns a previous chunk into sampler inputs.

    Args:
        previous: the previous chunk of the same batch.
        shift: rows executed since ``previous`` was requested (Ta in lockstep; 0 < shift <= H).
        crn: reuse the previous noise shifted by ``shift`` (common random numbers), fresh draws for the
            tail rows from ``generator``; otherwise the caller draws fresh noise (None is returned).
        generator: CPU generator of the fresh tail rows (``crn`` only).

    Returns:
        ``(noise, x0_guess)``: ``(x_T (B, H, D), noise (K, B, H, D))`` or None, and the Picard
        ``x0_guess`` (B, H, D) (`warm_start_guess`).
    """
    H = previous.sample.shape[-2]
    if not 0 < shift <= H:
        raise ValueError(f"shift must be in [1, {H}], got {shift}")
    noise = common_random_numbers(previous.x_T, previous.noise, shift, generator) if crn else None
    return noise, warm_start_guess(previous.sample, shift)
