"""Diffusion inpainting: sample with some rows known in advance (real-time chunk stitching).

A robot that plans while it moves knows part of the next plan before sampling it: the rows it will
execute from the current plan while the new one is computed (the *committed* rows), and, softer, the
rest of the current plan it would continue with. Real-time chunking (Black et al. 2025, "Real-Time
Execution of Action Chunking Flow Policies") samples the new plan so that it continues them; here the
same is done with the replacement form of diffusion inpainting, which needs no backward pass:

- at the start, each known row of x_T is replaced (with its weight) by the known value noised to the
  first step's level with x_T's own noise: x_T <- x_T + w·(√ᾱ₀·a + √(1-ᾱ₀)·x_T - x_T);
- after every step, each row is pulled with its weight w toward where the step takes it when its data
  prediction x̂₀ is the known value a (`step.held_x0_affine`: the DDPM posterior q(x' | x_t, x₀ = a)
  with the step's pre-drawn noise, or the DDIM / DPM-Solver++ update holding x̂₀ = a):
  x' <- x' + w·(held(x_t, a) - x'). Every update rule is affine in x̂₀ for a fixed x_t, so this is the
  step with x̂₀ replaced by w·a + (1-w)·x̂₀ (for DDIM with ε̂ kept consistent with that x̂₀).

With w = 1 a row therefore follows a forward-noised trajectory of its known value at every step's
noise level (for DDPM each step samples q(x_τ' | x_τ, a), so x_τ ~ q(x_τ | a) at every level) and ends
exactly at the known value (the last step lands on ᾱ' = 1 for the DiffusionPolicy settings); with
w = 0 it is untouched. The imposition is a fixed, row-wise function of (x_t, the step, its pre-drawn
noise), applied inside the shared `step.step`, so the Picard sampler converges to exactly the
sequential inpainted sample.

Part of the diffusion core: imports torch only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from parapolicy.policy.diffusion.step_table import StepTable

__all__ = ["Inpaint", "inpaint_start", "prepare_inpaint", "soft_prefix_weights", "start_inpainting"]


@dataclass(frozen=True)
class Inpaint:
    """Known values of some rows of a sample batch, with a weight per row.

    Attributes:
        target: (B, H, D) the known values in the sampler's (normalised) units; rows with weight 0 are
            ignored (any finite value).
        weight: (B, H, 1) or (B, H, D) weights in [0, 1]: 1 imposes the row, 0 leaves it free.
    """

    target: Tensor
    weight: Tensor

    def rows(self, samples: Tensor) -> Inpaint:
        """The entries of the samples ``samples`` ((R,) int64), e.g. one per Picard row."""
        return Inpaint(self.target.index_select(0, samples), self.weight.index_select(0, samples))

    def pull(self, x: Tensor) -> Tensor:
        """``x + w·(target - x)``: a guess of the sample (or of x̂₀) moved onto the known rows."""
        return torch.lerp(x, self.target.to(x), self.weight.to(x))


def prepare_inpaint(inpaint: Inpaint, x_T: Tensor) -> Inpaint:
    """Validate an `Inpaint` against the initial sample (B, H, D) and move it to its device and dtype.

    Raises:
        ValueError: a target not of the sample's shape, a weight not (B, H, 1) or (B, H, D), a weight
            outside [0, 1] or a non-finite target.
    """
    target, weight = inpaint.target, inpaint.weight
    if tuple(target.shape) != tuple(x_T.shape):
        raise ValueError(
            f"inpaint target must have the sample's shape {tuple(x_T.shape)}, got {tuple(target.shape)}"
        )
    lead, last = tuple(x_T.shape[:-1]), x_T.shape[-1]
    if weight.dim() != x_T.dim() or tuple(weight.shape[:-1]) != lead or weight.shape[-1] not in (1, last):
        raise ValueError(
            f"inpaint weight must have shape {(*lead, 1)} or {tuple(x_T.shape)}, got {tuple(weight.shape)}"
        )
    if not bool(((weight >= 0) & (weight <= 1)).all()):
        raise ValueError("inpaint weights must lie in [0, 1]")
    if not bool(torch.isfinite(target).all()):
        raise ValueError("inpaint target must be finite")
    return Inpaint(target.to(x_T), weight.to(x_T))


def inpaint_start(table: StepTable, x_T: Tensor, inpaint: Inpaint) -> Tensor:
    """x_T with each known row moved (by its weight) to its known value noised to step 0's level.

    Args:
        table: the step table (its ᾱ at step 0).
        x_T: (B, H, D) the pre-drawn initial sample; it also supplies the noise of the known rows.
        inpaint: the known rows.

    Returns:
        (B, H, D) ``x_T + w·(√ᾱ₀·a + √(1-ᾱ₀)·x_T - x_T)``.
    """
    noised = table.sqrt_alpha_bar[0] * inpaint.target + table.sqrt_one_minus_alpha_bar[0] * x_T  # (B, H, D)
    return torch.lerp(x_T, noised, inpaint.weight.to(x_T))


def start_inpainting(table: StepTable, x_T: Tensor, inpaint: Inpaint | None) -> tuple[Tensor, Inpaint | None]:
    """What every sampler does first: validate ``inpaint`` and impose it on x_T (None: both unchanged)."""
    if inpaint is None:
        return x_T, None
    inpaint = prepare_inpaint(inpaint, x_T)
    return inpaint_start(table, x_T, inpaint), inpaint


def soft_prefix_weights(
    n_rows: int,
    committed: int,
    overlap_end: int,
    *,
    start: int = 0,
    decay: str = "exp",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Per-row weights of real-time chunking (Black et al. 2025, eq. 5): 1, then an exponential decay, then 0.

    Rows ``start .. start+committed-1`` get 1 (they will be executed whatever the new plan says); rows
    ``start+committed .. start+overlap_end-1`` (the rest of the current plan, which the new one should
    continue) get ``c·(e^c - 1)/(e - 1)`` with ``c = (overlap_end - i)/(overlap_end - committed + 1)`` for
    row offset i, decaying from nearly 1 to nearly 0 (``decay="linear"``: ``c`` itself); every other row
    gets 0. Rows before ``start`` get 0 too (the caller sets any it knows).

    Args:
        n_rows: rows of the sample (H).
        committed: rows fixed to 1 after ``start`` (d, the expected delay in rows), >= 0.
        overlap_end: row offset (after ``start``) where the known plan ends, >= ``committed``.
        start: row of offset 0 (the plan row of the request tick).
        decay: ``exp`` (real-time chunking's) or ``linear``.
        dtype: dtype of the result.

    Returns:
        (n_rows,) weights in [0, 1].
    """
    if not 0 <= committed <= overlap_end:
        raise ValueError(f"need 0 <= committed <= overlap_end, got {committed}, {overlap_end}")
    if not 0 <= start <= n_rows:
        raise ValueError(f"start must be in [0, {n_rows}], got {start}")
    if decay not in ("exp", "linear"):
        raise ValueError(f"decay must be 'exp' or 'linear', got {decay!r}")
    w = torch.zeros(n_rows, dtype=torch.float64)  # (H,)
    for i in range(n_rows - start):
        if i < committed:
            w[start + i] = 1.0
        elif i < overlap_end:
            c = (overlap_end - i) / (overlap_end - committed + 1)
            w[start + i] = c * math.expm1(c) / math.expm1(1.0) if decay == "exp" else c
    return w.to(dtype)
