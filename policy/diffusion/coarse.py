"""The linear coarse propagator of the Parareal update: each step's slope with x̂₀ following x.

The Parareal update (`picard.sample_picard`, ``update="parareal"``) carries the change of a window's
slot to the next slot through a coarse model of the step. The default model holds x̂₀ fixed, so the
step's slope is the scalar a_j (`StepTable.rollout_coef_x`). With the step written as
x_{j+1} = a_j·x_j + b_j·x̂₀(x_j) + σ_j·z_j, its true slope is the matrix a_j·I + b_j·∂x̂₀/∂x_j.
`x0_jacobian` measures ∂x̂₀/∂x_j along a sampled trajectory with the denoiser itself (finite
differences, any denoiser callable), averaged over samples, and `linear_slopes` turns it into the
matrices the update carries changes with. Only the convergence speed depends on the coarse model: the
fixed point, and the tol = 0 equality with the sequential sample, do not.

Torch only (the diffusion core).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from parapolicy.policy.diffusion.denoiser import Denoiser
from parapolicy.policy.diffusion.step import predict_x0
from parapolicy.policy.diffusion.step_table import StepTable

__all__ = ["x0_jacobian", "linear_slopes"]


def x0_jacobian(
    denoise: Denoiser,
    table: StepTable,
    trajectory: Tensor,
    cond: Tensor | None,
    *,
    eps: float = 1e-3,
    max_samples: int = 2,
    max_rows: int = 512,
) -> Tensor:
    """∂x̂₀/∂x at every slot of a trajectory, by forward differences, averaged over its samples.

    Args:
        denoise: the denoiser callable ``(N, H, D), (N,), (N, C) -> (N, H, D)``.
        table: the step table the trajectory was sampled with.
        trajectory: (K+1, B, H, D) slots of a sample (slot j is the input of step j).
        cond: (B, C) conditioning of the samples, or None.
        eps: the finite-difference step, in normalised action units.
        max_samples: how many of the B samples to measure (the first ones).
        max_rows: rows per denoiser call.

    Returns:
        (K, H·D, H·D) float32 Jacobians, row = output element, column = input element.
    """
    K = table.num_steps
    if trajectory.dim() < 3 or trajectory.shape[0] != K + 1:
        raise ValueError(f"trajectory must be (K+1={K + 1}, B, ...), got {tuple(trajectory.shape)}")
    S = min(int(trajectory.shape[1]), max_samples)
    rest = tuple(trajectory.shape[2:])
    D = math.prod(rest)
    probe = torch.cat([torch.zeros(1, D), eps * torch.eye(D)]).to(trajectory)  # (D+1, D): base, then e_k
    # every (slot, sample, probe) row, slot-major: (K·S·(D+1), H, Da)
    x = (trajectory[:K, :S].reshape(K, S, 1, D) + probe).reshape(-1, *rest)
    slot = torch.arange(K, device=trajectory.device).repeat_interleave(S * (D + 1))  # (N,)
    c = None if cond is None else cond[:S].repeat_interleave(D + 1, 0).repeat(K, 1)  # (N, C)
    x0 = torch.empty_like(x)
    with torch.no_grad():
        for lo in range(0, x.shape[0], max_rows):
            part = slice(lo, lo + max_rows)
            out = denoise(x[part], table.timesteps[slot[part]], None if c is None else c[part])
            x0[part] = predict_x0(table, table.rows(slot[part], trailing=len(rest)), x[part], out)
    x0 = x0.reshape(K, S, D + 1, D).double()
    J = (x0[:, :, 1:] - x0[:, :, :1]) / eps  # (K, S, D in, D out)
    return J.mean(1).transpose(1, 2).float().contiguous()  # (K, D out, D in)


def linear_slopes(table: StepTable, jacobian: Tensor) -> Tensor:
    """(K, H·D, H·D) slopes a_j·I + b_j·J_j of the steps with x̂₀ following x through ``jacobian``.

    Args:
        table: the step table (a_j = ``rollout_coef_x``, b_j = ``rollout_coef_x0``).
        jacobian: (K, H·D, H·D) ∂x̂₀/∂x per step (`x0_jacobian`).
    """
    K = table.num_steps
    if jacobian.dim() != 3 or jacobian.shape[0] != K or jacobian.shape[1] != jacobian.shape[2]:
        raise ValueError(f"jacobian must be (K={K}, D, D), got {tuple(jacobian.shape)}")
    if not bool(torch.isfinite(jacobian).all()):
        raise ValueError("jacobian has non-finite values")
    J = jacobian.to(device=table.device, dtype=table.dtype)
    a = table.rollout_coef_x.to(J)[:, None, None]  # (K, 1, 1)
    b = table.rollout_coef_x0.to(J)[:, None, None]  # (K, 1, 1)
    return a * torch.eye(J.shape[1], dtype=J.dtype, device=J.device) + b * J
