"""The Parareal update's carry: how the change of one slot of a Picard window reaches the next slots.

The Parareal update of `picard.sample_picard` (``update="parareal"``) writes new X[b+1+i] = y_{b+i} +
c_i for the window starting at slot b: c_i carries the changes g_j = y_{b+j-1} - X[b+j] (1 <= j <= i,
the change of slot b+j, which enters step b+j) through a coarse model of each step,
c_i = M_{b+i}·(c_{i-1} + g_i), c_0 = 0. This module holds that carry for each coarse model
(`SamplerConfig.coarse`):

- `HeldX0Carry` (``coarse="held_x0"``): M_j is the scalar slope a_j of step j with x̂₀ held fixed, so the
  carry is one small matrix product with weights Π a from the cumulative log-slopes;
- `LinearCarry` (``coarse="linear"``): M_j is the matrix a_j·I + b_j·∂x̂₀/∂x_j (`coarse.linear_slopes`),
  applied one window position after the other.

Either carry changes only the iteration count: a prefix of unchanged slots carries exactly 0, so the
fixed point (and tol = 0 parity with the sequential sampler) is the same.

Library module: imports torch only.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import Tensor

from parapolicy.policy.diffusion.coarse import linear_slopes
from parapolicy.policy.diffusion.rollout import log_slope_sums
from parapolicy.policy.diffusion.step_table import StepTable

__all__ = ["HeldX0Carry", "LinearCarry"]


class HeldX0Carry:
    """The carry weights of the Parareal update for windows starting at any slot (on the device).

    a_j is the slope of step j with x̂₀ held fixed (`table.rollout_coef_x`, read off the step itself
    when the table was built); weight[i, j] = Π_{m=j..i} a_{b+m} for 1 <= j <= i multiplies grid
    column j (the change of refreshed slot b+j, i.e. of the slot entering step b+j) in row i. With
    the cumulative log-slopes C[n] = Σ_{m<n} log a_m (float64), weight[i, j] = exp(C[b+i+1] - C[b+j]).
    Built once per table and window (`StepTable.cached`); the weights of a single window start are
    kept as they are first computed, up to `MAX_KEPT_ELEMENTS` in all.
    """

    MAX_KEPT_ELEMENTS = 1 << 22

    def __init__(self, table: StepTable, p: int) -> None:
        K, dev = table.num_steps, table.device
        self.C = log_slope_sums(table, K + p + 2)
        self.offsets = torch.arange(p + 2, device=dev)  # (p+2,)
        col = torch.arange(p + 1, device=dev)
        self.outside = (col[None, :] < 1) | (col[None, :] > col[:, None])  # (p+1, p+1) not 1 <= j <= i
        self.dtype = table.dtype
        self.kept: dict[int | tuple[int, int], Tensor] = {}  # start -> (1, p+1, p+1); (start, R) -> (R, R)
        self.max_kept = max(self.MAX_KEPT_ELEMENTS // (p + 1) ** 2, 1)

    def carry(self, starts: Tensor | int, grid: Tensor, length: int) -> Tensor:
        """(A, p+1, H·D) carried changes of the (A, p+1, H·D) grid of windows starting at ``starts``
        (``length``: the longest window; unused, the product covers every column)."""
        return torch.bmm(self.weights(starts), grid)

    def weights(self, starts: Tensor | int) -> Tensor:
        """(A, p+1, p+1) weights for windows starting at ``starts`` ((A,) int64 on the device, or one
        start b as an int)."""
        if not isinstance(starts, int):
            return self._from_logs(self.C[starts[:, None] + self.offsets])  # C[b+k]: (A, p+2)
        W = self.kept.get(starts)
        if W is None:
            W = self._from_logs(self.C[starts : starts + self.offsets.numel()][None])  # (1, p+2)
            if len(self.kept) < self.max_kept:
                self.kept[starts] = W
        return W

    def window(self, start: int, R: int) -> Tensor:
        """(R, R) weights of one window of R rows starting at ``start``: row i's weights on the
        changes of rows j < i (contiguous; kept as `weights`' are)."""
        W = self.kept.get((start, R))
        if W is None:
            W = self.weights(start)[0, :R, 1 : R + 1].contiguous()
            if len(self.kept) < self.max_kept:
                self.kept[(start, R)] = W
        return W

    def _from_logs(self, G: Tensor) -> Tensor:
        """(A, p+1, p+1) weights from G = C[b + 0..p+1] of each window ((A, p+2))."""
        log_w = G[:, 1:, None] - G[:, None, :-1]  # (A, p+1, p+1) C[b+i+1] - C[b+j]
        return log_w.masked_fill_(self.outside, -math.inf).exp_().to(self.dtype)


class LinearCarry:
    """The Parareal carry with matrix slopes M_j (`coarse.linear_slopes`): column i of a window
    starting at b carries c_i = M_{b+i}·(c_{i-1} + g_i), c_0 = 0, over the grid columns g_i (the
    scalar `HeldX0Carry` in closed form), with one dependent operation per window position: in
    `carry` (the batched grid) as c_i = h_i + M_{b+i}·c_{i-1}, every h_i = M_{b+i}·g_i from one
    batched product first; in `window` (one sample) on c_i + g_{i+1}. Kept per table and Jacobian
    (`for_jacobian`).
    """

    def __init__(self, slopes: Tensor, p: int) -> None:
        K = slopes.shape[0]
        pad = slopes[K - 1 :].expand(p + 1, -1, -1)  # positions past K: never read back
        self.M = torch.cat([slopes, pad])  # (K+p+1, H·D, H·D)
        self.mats = self.M.unbind(0)  # each step's (H·D, H·D) view, read without an indexing op
        self.offsets = torch.arange(p + 1, device=slopes.device)  # (p+1,)

    @staticmethod
    def for_jacobian(table: StepTable, jacobian: Tensor, p: int) -> LinearCarry:
        """The carry of ``jacobian`` ((K, H·D, H·D), `coarse.x0_jacobian`) for windows of p rows,
        built once per table while the same tensor is passed unchanged (weakly held: a new or
        modified Jacobian builds anew; an inference tensor keeps no version, so its in-place changes
        go unseen)."""
        version = -1 if jacobian.is_inference() else jacobian._version  # inference tensors keep none
        kept = table.memo.get(("linear_carry", p))
        if kept is not None and kept[0]() is jacobian and kept[1] == version:
            return kept[2]
        carry = LinearCarry(linear_slopes(table, jacobian), p)
        table.memo[("linear_carry", p)] = (weakref.ref(jacobian), version, carry)
        return carry

    def window(self, start: int, changes: Tensor) -> Tensor:
        """(R, H·D) carried changes of one window of R rows starting at slot ``start``: row i gets
        c_i of the changes of rows j < i (``changes``: (R, H·D); row 0 gets 0).

        With u_i = c_i + g_{i+1} (g_{i+1}: the change of row i), u_i = g_{i+1} + M_{b+i}·u_{i-1} is one
        in-place matrix-vector product per row on a copy of the changes, and c_i = u_i - g_{i+1}
        (exactly 0 while every earlier change is 0): three kinds of operation in all, since each
        new kind costs most right after a network call."""
        u = changes.clone()  # (R, H·D); u_0 = c_0 + g_1 = g_1
        rows, mats = u.unbind(0), self.mats
        for i in range(1, changes.shape[0]):
            rows[i].addmv_(mats[start + i], rows[i - 1])  # u_i = g_{i+1} + M_{b+i}·u_{i-1}
        return u.sub_(changes)  # c_i

    def carry(self, starts: Tensor, grid: Tensor, length: int) -> Tensor:
        """(A, p+1, H·D) carried changes of the (A, p+1, H·D) grid of windows starting at ``starts``
        ((A,) on the device; columns up to ``length - 1``, the longest window's last row, are
        computed; the rest stay 0)."""
        M = self.M[starts[:, None] + self.offsets[1:length]]  # (A, n, H·D, H·D), n = length - 1
        out = torch.zeros_like(grid)
        if length < 2:
            return out
        h = torch.matmul(M, grid[:, 1:length].unsqueeze(-1))  # (A, n, H·D, 1): M_{b+i}·g_i
        for i in range(1, length - 1):
            h[:, i].baddbmm_(M[:, i], h[:, i - 1])  # c_i = h_i + M_{b+i}·c_{i-1}
        out[:, 1:length] = h.squeeze(-1)
        return out
