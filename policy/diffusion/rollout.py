"""The model-free roll-out of the Picard samplers: steps with x̂₀ held fixed, in closed form.

With x̂₀ held, step m is the affine map x -> a_m·x + c_m (`step.held_x0_affine`; a_m is the table's
`rollout_coef_x`, read off the shared step). M such steps from slot e are one matrix product over the
c's, with weights from the cumulative log-slopes, instead of M dependent operations. The Parareal
update's carry weights (`parareal`) are built from the same sums.

Library module: imports torch only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from parapolicy.policy.diffusion.step_table import StepRows, StepTable

__all__ = ["HeldRollout", "log_slope_sums"]


def log_slope_sums(table: StepTable, n: int) -> Tensor:
    """(n,) float64 C[i] = Σ_{m<i} log a_m over the held-x̂₀ slopes a_m (`table.rollout_coef_x`), so
    that Π_{m=j..i-1} a_m = exp(C[i] - C[j]); past step K-1 the slope is 1 (C stays constant), and a
    slope of 0 (a step onto clean data) counts as e^-690."""
    K = table.num_steps
    log_a = table.rollout_coef_x.to(torch.float64).clamp_min(1e-300).log()  # (K,); a = 0 -> -690
    C = torch.zeros(max(n, K + 1), dtype=torch.float64, device=table.device)
    C[1 : K + 1] = log_a.cumsum(0)
    C[K + 1 :] = C[K]
    return C


class HeldRollout:
    """The roll-out with x̂₀ held (x_{m+1} = a_m·x_m + c_m) in closed form, for the Picard samplers' refill
    (`picard.sample_picard`, `runtime.graphed_picard.PicardGraph`).

    From slot e, x_{e+1+k} = A_k·x_e + Σ_{j<=k} W_kj·c_{e+j} with A_k = Π_{m=e..e+k} a_m and
    W_kj = Π_{m=e+j+1..e+k} a_m (1 on the diagonal, 0 above it), from the cumulative log-slopes
    (`log_slope_sums`) in float64, cast to the table's dtype (`weights`, or `run` for one sample),
    applied by `apply`. Built once per table (`of`); one sample's (rows, A, W) are kept per (e, M) as
    first computed, up to `MAX_KEPT` of them.
    """

    MAX_KEPT = 4096

    def __init__(self, table: StepTable, trailing: int) -> None:
        self.table, self.trailing = table, trailing
        self.C = log_slope_sums(table, 2 * table.num_steps + 2)  # e + M <= 2K
        self.kept: dict[tuple[int, int], tuple[StepRows, Tensor, Tensor]] = {}

    @staticmethod
    def of(table: StepTable, trailing: int) -> HeldRollout:
        """The table's roll-out for samples with ``trailing`` dims after the row, built once
        (`StepTable.cached`)."""
        return table.cached(("held_rollout", trailing), lambda: HeldRollout(table, trailing))

    @staticmethod
    def apply(gain: Tensor, weights: Tensor, x_end: Tensor, c: Tensor) -> Tensor:
        """(A, M, H·D) slots e+1 .. e+M of A roll-outs, A_k·x_e + Σ_{j<=k} W_kj·c_{e+j}: from the
        (A, M, 1) gains and (A, M, M) weights (`weights`, `run`), the (A, H, D) values at slot e and
        the (A, M, H·D) offsets c of the steps."""
        return torch.baddbmm(gain * x_end.view(x_end.shape[0], 1, -1), weights, c)

    def weights(self, starts: Tensor, M: int) -> tuple[Tensor, Tensor]:
        """(A, M, 1) gains A and (A, M, M) weights W of roll-outs from the slots ``starts`` ((A,) int64)."""
        G = self.C[starts[:, None] + torch.arange(M + 1, device=starts.device)]  # (A, M+1): C[e + i]
        gain = (G[:, 1:] - G[:, :1]).exp()  # (A, M) Π_{m=e..e+k} a_m
        log_w = G[:, 1:, None] - G[:, None, 1:]  # (A, M, M) C[e+k+1] - C[e+j+1]
        above = torch.ones(M, M, dtype=torch.bool, device=starts.device).triu(1)  # j > k
        weights = log_w.masked_fill_(above, -math.inf).exp_()
        dtype = self.table.dtype
        return gain.unsqueeze(-1).to(dtype), weights.to(dtype)

    def run(self, e: int, M: int) -> tuple[StepRows, Tensor, Tensor]:
        """One sample's roll-out from slot ``e`` over M steps: the steps' rows, (1, M, 1) A, (1, M, M) W."""
        key = (e, M)
        kept = self.kept.get(key)
        if kept is None:
            gain, weights = self.weights(torch.tensor([e], device=self.table.device), M)
            kept = (self.table.rows(slice(e, e + M), trailing=self.trailing), gain, weights)
            if len(self.kept) < self.MAX_KEPT:
                self.kept[key] = kept
        return kept
