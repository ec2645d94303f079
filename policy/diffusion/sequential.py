"""Sequential sampling (DDPM / DDIM / DPM-Solver++ by the table's kind), noise drawing and `SampleResult`.

Samplers are free functions over a denoiser callable `denoise(x: (N, H, D), t: (N,), cond: (N, C)) ->
(N, H, D)` (see `denoiser.Denoiser`). Everything comes in as arguments (initial sample, pre-drawn step
noise, step table, conditioning) and everything goes out in the returned `SampleResult`; no sampler holds
state. The Picard (ParaDiGMS) sampler lives in `picard.py` and shares `step.step` with this one.

Library module: imports torch only (no hydra, no zarr).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from parapolicy.policy.diffusion.denoiser import Denoiser
from parapolicy.policy.diffusion.inpaint import Inpaint, start_inpainting
from parapolicy.policy.diffusion.step import step
from parapolicy.policy.diffusion.step_table import StepTable

__all__ = ["SampleResult", "draw_noise", "sample_sequential", "sync_device"]


@dataclass(frozen=True)
class SampleResult:
    """A sampler's output and the work it did.

    Attributes:
        sample: (B, H, D) final sample x after the last step.
        iterations: sampler iterations: K for the sequential sampler, Picard iterations for Picard.
        model_calls: number of `denoise` calls.
        rows_evaluated: total rows passed to `denoise` over all calls (model evaluations, "flops").
        sequential_passes: denoiser passes on the critical path (each call depends on the previous one),
            including any sequential fallback steps after a Picard cap.
        converged: (B,) bool on the CPU; per sample, whether the sampler reached the end of the schedule by
            its own rule (always True for the sequential sampler; False for samples that hit Picard's
            `max_iters`, even when they were then finished sequentially).
        all_converged: `converged.all()` as a Python bool.
        final_residual: (B,) float on the CPU; per sample, the largest normalised RMS change
            ‖Δ‖/(√D·σ) over the slots of its last Picard window (0 for the sequential sampler).
        wall_time_s: wall-clock seconds of the call (device synchronised at the end on CUDA).
        rows_per_call: rows passed to each `denoise` call, in order.
        trajectory: (K+1, B, H, D) every buffer slot (slot 0 = x_T, slot j = after j steps), or None.
    """

    sample: Tensor
    iterations: int
    model_calls: int
    rows_evaluated: int
    sequential_passes: int
    converged: Tensor
    all_converged: bool
    final_residual: Tensor
    wall_time_s: float
    rows_per_call: tuple[int, ...] = ()
    trajectory: Tensor | None = None


def draw_noise(
    table: StepTable,
    shape: Sequence[int],
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw the initial sample x_T and all per-step noise up front, on the CPU, then move them.

    Drawing on the CPU makes the numbers independent of the target device (as diffusers' `randn_tensor`).
    With one generator, x_T is drawn first and then the (K, B, ...) step noise in one call. With a
    sequence of B generators, sample b draws its own x_T then its own (K, ...) noise from generator b, so
    a sample's noise does not depend on the batch it is in. The deterministic kinds ignore the step noise
    (it is still drawn, so the stream of x_T does not depend on the sampler kind).

    Args:
        table: the step table (gives K).
        shape: (B, H, D) shape of one sample batch.
        generator: a CPU `torch.Generator`, a sequence of B of them, or None (global RNG).
        device: where the tensors go (default CPU).
        dtype: dtype of the returned tensors (drawn in float32 first); default the table's.

    Returns:
        (x_T, noise) with shapes (B, H, D) and (K, B, H, D).

    Raises:
        ValueError: ``generator`` is none of those (e.g. an int seed), or a sequence of the wrong length.
    """
    shape = tuple(int(s) for s in shape)
    K = table.num_steps
    if generator is None or isinstance(generator, torch.Generator):
        x_T = torch.randn(shape, generator=generator, dtype=torch.float32)  # (B, H, D)
        noise = torch.randn((K, *shape), generator=generator, dtype=torch.float32)  # (K, B, H, D)
    else:
        gens = list(generator) if isinstance(generator, Sequence) else []
        if not gens or not all(isinstance(g, torch.Generator) for g in gens):
            raise ValueError(
                "generator must be a CPU torch.Generator, a sequence of one per sample, or None; got "
                f"{type(generator).__name__} (for a seed, pass torch.Generator().manual_seed(seed))"
            )
        if len(gens) != shape[0]:
            raise ValueError(f"need one generator per sample ({shape[0]}), got {len(gens)}")
        xs, ns = [], []
        for g in gens:
            xs.append(torch.randn(shape[1:], generator=g, dtype=torch.float32))  # (H, D)
            ns.append(torch.randn((K, *shape[1:]), generator=g, dtype=torch.float32))  # (K, H, D)
        x_T = torch.stack(xs, dim=0)  # (B, H, D)
        noise = torch.stack(ns, dim=1)  # (K, B, H, D)
    dtype = table.dtype if dtype is None else dtype
    return x_T.to(device=device, dtype=dtype), noise.to(device=device, dtype=dtype)


def check_inputs(x_T: Tensor, table: StepTable, noise: Tensor | None, cond: Tensor | None) -> None:
    """Validate shapes and devices shared by every sampler (raises ValueError)."""
    if x_T.dim() < 2:
        raise ValueError(f"x_T must be (B, ...), got shape {tuple(x_T.shape)}")
    if table.device != x_T.device:
        raise ValueError(f"table is on {table.device} but x_T is on {x_T.device}; use table.to(device)")
    if table.dtype != x_T.dtype:
        raise ValueError(
            f"table is {table.dtype} but x_T is {x_T.dtype}: draw x_T and the noise in the table's dtype"
        )
    K, B = table.num_steps, x_T.shape[0]
    if noise is None:
        if table.is_stochastic:
            raise ValueError("DDPM sampling needs the pre-drawn step noise")
    elif tuple(noise.shape) != (K, *x_T.shape):
        raise ValueError(f"noise must have shape {(K, *x_T.shape)}, got {tuple(noise.shape)}")
    if cond is not None and cond.shape[0] != B:
        raise ValueError(f"cond must have batch size {B}, got {cond.shape[0]}")


def sync_device(device: torch.device | str) -> None:
    """Wait for queued work on a CUDA device (no-op elsewhere), so wall-clock timings are honest."""
    if not isinstance(device, torch.device):  # building one costs tens of us right after a network call
        device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def finish_timing(x: Tensor, start: float) -> float:
    """Synchronise `x`'s device if it is CUDA, then return seconds since `start`."""
    if x.is_cuda:  # an attribute read: cheaper than the device object right after a network call
        sync_device(x.device)
    return time.perf_counter() - start


def sample_sequential(
    denoise: Denoiser,
    x_T: Tensor,
    table: StepTable,
    noise: Tensor | None,
    cond: Tensor | None,
    *,
    return_trajectory: bool = False,
    inpaint: Inpaint | None = None,
) -> SampleResult:
    """Sample by applying `step` K times in order (ancestral DDPM, DDIM η=0 or DPM-Solver++(2M)).

    The loop has no host synchronisation: timesteps are read from the device tensor `table.timesteps`,
    coefficients are selected by step position, and there is no `.item()`. The only sync is at the end,
    on CUDA, to time the call.

    Args:
        denoise: the denoiser callable.
        x_T: (B, H, D) initial sample.
        table: step table on the device of `x_T`.
        noise: (K, B, H, D) pre-drawn standard-normal noise (required for DDPM; the deterministic kinds
            ignore it and accept None).
        cond: (B, C) conditioning, or None.
        return_trajectory: also return every intermediate sample as a (K+1, B, H, D) tensor.
        inpaint: known rows of the sample (see `inpaint`), imposed on x_T and in every step; None: none.

    Returns:
        `SampleResult` with iterations = model_calls = sequential_passes = K and rows_evaluated = K·B.
    """
    start = time.perf_counter()
    check_inputs(x_T, table, noise, cond)
    K, B = table.num_steps, x_T.shape[0]
    x_T, inpaint = start_inpainting(table, x_T, inpaint)
    traj = None
    if return_trajectory:
        traj = torch.empty((K + 1, *x_T.shape), dtype=x_T.dtype, device=x_T.device)  # (K+1, B, H, D)
        traj[0] = x_T
    x = x_T
    prev_x0: Tensor | None = None
    for i in range(K):
        t = table.timesteps[i].expand(B)  # (B,) device view, no host copy
        out = denoise(x, t, cond)  # (B, H, D)
        res = step(table, i, x, out, None if noise is None else noise[i], prev_x0=prev_x0, inpaint=inpaint)
        x, prev_x0 = res.prev_sample, res.x0_hat
        if traj is not None:
            traj[i + 1] = x
    return SampleResult(
        sample=x,
        iterations=K,
        model_calls=K,
        rows_evaluated=K * B,
        sequential_passes=K,
        converged=torch.ones(B, dtype=torch.bool),
        all_converged=True,
        final_residual=torch.zeros(B),
        wall_time_s=finish_timing(x, start),
        rows_per_call=(B,) * K,
        trajectory=traj,
    )
