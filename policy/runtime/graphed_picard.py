"""A whole Picard iteration as fixed-shape device work, replayable as one CUDA graph (DDPM and DDIM).

`diffusion.picard.sample_picard` keeps its bookkeeping on the host: the window starts decide each
call's row count, so every iteration is many small launches plus one device-to-host copy. On a GPU
at batch 1 the launches, not the network's arithmetic, set the time. `PicardGraph` runs the same
iteration with every shape fixed, so that the whole of it (gather, network, step, cumulative update,
convergence test, slide and the model-free x̂₀ roll-out refill) can be captured once and replayed:

* every sample always evaluates ``window`` rows: rows past the end of the schedule read clamped
  coefficients and write only into padding slots K+1 .. K+window of the trajectory buffer, so they
  never touch a real slot (their outputs are discarded);
* the window starts live on the device; the host reads one flag per iteration to stop (the same one
  synchronisation per iteration as `sample_picard`);
* the update, the error test and the slide are `sample_picard`'s steps 2-5 (the first refreshed slot
  is the sequential step bitwise; the exclusive cumulative sum runs over a zero-led grid as in
  `sample_picard`'s batched path), so the fixed point is the sequential sample and at tol = 0 the
  result equals it as `sample_picard`'s does. The iteration counts are `sample_picard`'s with
  ``refill="x0_rollout"`` up to float rounding: for one sample `sample_picard` sums a window's changes
  with a matrix product instead, whose last bits can move the iteration where a slot passes.

Off CUDA (or with ``graph=False``) the same iteration runs eagerly: that is how it is tested on the CPU.
DPM-Solver++ (its x̂₀ history cache) and ``update="parareal"`` are not supported.
Library module: torch only, no hydra.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import Tensor

from parapolicy.policy.diffusion.picard import change_norm_thresholds
from parapolicy.policy.diffusion.rollout import HeldRollout
from parapolicy.policy.diffusion.sequential import SampleResult, check_inputs, finish_timing
from parapolicy.policy.diffusion.step import held_x0_affine, step
from parapolicy.policy.diffusion.step_table import StepTable

__all__ = ["PicardGraph"]

Denoise = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]
_WARMUP_ITERATIONS = 3


class PicardGraph:
    """Sliding-window Picard sampling for one batch shape, each iteration one fixed-shape step.

    Args:
        denoise: the network (or any denoiser without host synchronisation) ``(N, H, D), (N,), (N, C)``.
        table: the step table (DDPM or DDIM), on the sampling device.
        batch_shape: (B, H, D) of the samples.
        cond_dim: C, the conditioning width (0: no conditioning).
        window: p, the rows per sample per iteration (capped at K).
        tol: Picard tolerance (>= 0), as `sample_picard`'s.
        graph: capture the iteration as a CUDA graph (CUDA tables only; default: on CUDA).

    Raises:
        ValueError: on a DPM-Solver++ table, a bad window or tolerance, or ``graph=True`` off CUDA.
    """

    def __init__(
        self,
        denoise: Denoise,
        table: StepTable,
        batch_shape: tuple[int, int, int],
        cond_dim: int,
        *,
        window: int,
        tol: float,
        graph: bool | None = None,
    ) -> None:
        if table.uses_history:
            raise ValueError(f"PicardGraph supports DDPM and DDIM tables, not {table.kind!r}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not (tol >= 0 and math.isfinite(tol)):
            raise ValueError(f"tol must be finite and >= 0, got {tol}")
        dev = table.device
        graph = dev.type == "cuda" if graph is None else graph
        if graph and dev.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA table, got {dev}")
        self.denoise, self.table, self.graph = denoise, table, graph
        B, H, D = batch_shape
        K, p = table.num_steps, min(window, table.num_steps)
        self.B, self.rest, self.K, self.p, self.cond_dim = B, (H, D), K, p, cond_dim
        dtype = table.dtype
        # static state: (K + p + 1) slots, the last p are padding written by rows past the schedule
        self.X = torch.zeros((K + p + 1, B, H, D), dtype=dtype, device=dev)  # (K+p+1, B, H, D)
        self.noise = torch.zeros((K, B, H, D), dtype=dtype, device=dev)  # (K, B, H, D)
        self.cond = torch.zeros((B, max(cond_dim, 1)), dtype=dtype, device=dev)  # (B, C)
        self.b = torch.zeros(B, dtype=torch.long, device=dev)  # (B,) window starts
        self.done = torch.zeros((), dtype=torch.bool, device=dev)  # all samples finished
        self.s = torch.arange(B, device=dev)[:, None]  # (B, 1) sample of each row
        self.i = torch.arange(p, device=dev)[None, :]  # (1, p) window position of each row
        # threshold on the change's norm of refreshed slot j (1..K+p), as `sample_picard`'s; slot K and
        # padding always pass
        err_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        thr = torch.full((K + p + 1,), math.inf, dtype=err_dtype, device=dev)
        thr[:K] = torch.from_numpy(change_norm_thresholds(table, tol, 0.0, H * D)[0][:K]).to(thr)
        self.thr, self.err_dtype = thr, err_dtype
        self.held = HeldRollout.of(table, 2)
        self._graph: torch.cuda.CUDAGraph | None = None

    # ----------------------------------------------------------------------------------------------
    def _roll_out(self, ends: Tensor, counts: Tensor, x_end: Tensor, x0: Tensor) -> None:
        """Slots e+1 .. e+count of each sample from X[e], x̂₀ held fixed (as `sample_picard`'s refill,
        in the same closed form: `rollout.HeldRollout`).

        Args:
            ends: (B,) slot e each roll-out starts from. counts: (B,) slots to fill (0..p).
            x_end: (B, H, D) the value at slot e. x0: (B, H, D) the held x̂₀.
        """
        K, p, B = self.K, self.p, self.B
        src = (ends[:, None] + self.i).clamp(max=K - 1)  # (B, p) step leaving slot e+k
        z = self.noise[src, self.s] if self.table.is_stochastic else None  # (B, p, H, D)
        _, c = held_x0_affine(self.table, self.table.rows(src, trailing=2), x0[:, None], z)  # (B, p, H, D)
        gain, weights = self.held.weights(ends, p)  # (B, p, 1), (B, p, p)
        filled = HeldRollout.apply(gain, weights, x_end, c.view(B, p, -1))  # (B, p, H·D)
        dest = torch.where(self.i < counts[:, None], ends[:, None] + 1 + self.i, K + 1 + self.i)  # (B, p)
        self.X[dest, self.s] = filled.view(B, p, *self.rest)  # past the count: padding slots

    def _iteration(self) -> None:
        """One Picard iteration on the static state: `sample_picard`'s steps 1-5 with fixed shapes."""
        K, p, B = self.K, self.p, self.B
        H, D = self.rest
        R = B * p
        pos = self.b[:, None] + self.i  # (B, p) slot of each row (past K: padding)
        valid = pos < K  # (B, p)
        posc = pos.clamp(max=K - 1).reshape(R)  # (R,) step positions for the table
        x_r = self.X[pos, self.s].reshape(R, H, D)  # (R, H, D)
        c_r = self.cond[:, None, :].expand(B, p, self.cond.shape[1]).reshape(R, -1) if self.cond_dim else None
        out = self.denoise(x_r, self.table.timesteps.index_select(0, posc), c_r)  # (R, H, D)
        z_r = self.noise[pos.clamp(max=K - 1), self.s].reshape(R, H, D) if self.table.is_stochastic else None
        res = step(self.table, self.table.rows(posc), x_r, out, z_r)
        y, x0_r = res.prev_sample.view(B, p, H, D), res.x0_hat.view(B, p, H, D)
        old = self.X[pos + 1, self.s]  # (B, p, H, D)
        grid = torch.zeros((B, p + 1, H, D), dtype=y.dtype, device=y.device)  # zero-led, as sample_picard
        grid[:, 1:] = y - old
        new = y + grid.cumsum(1)[:, :p]  # (B, p, H, D): y_i + Σ_{j<i} (y_j - old_j)
        keep = valid[..., None, None]
        self.X[pos + 1, self.s] = torch.where(keep, new, old)
        err = torch.linalg.vector_norm(new - old, dim=(2, 3), dtype=self.err_dtype)  # (B, p)
        ok = (err <= self.thr[pos + 1]) | ~valid  # slot K and padding always pass
        L = (K - self.b).clamp(max=p)  # (B,) window lengths (0: finished)
        first_bad = torch.where(ok, L[:, None], self.i).amin(1)  # (B,) sentinel L when all converged
        ends = self.b + L  # (B,) old window ends
        b_new = (self.b + (first_bad + 1).clamp(max=p)).clamp(max=K)  # (B,) slide by [1, p], stop at K
        counts = ((b_new + p).clamp(max=K) - ends).clamp(min=0)  # (B,) newly exposed slots
        last = (L - 1).clamp(min=0)  # (B,) each sample's last row
        x_last = new[self.s[:, 0], last]  # (B, H, D)
        self.b.copy_(b_new)
        self._roll_out(ends, counts * (L > 0), x_last, x0_r[self.s[:, 0], last])
        self.done.copy_((self.b >= K).all())

    def _load(self, x_T: Tensor, noise: Tensor | None, cond: Tensor | None, x0_guess: Tensor | None) -> None:
        """Copy the inputs into the static state and roll the first window out from ``x0_guess`` (or 0)."""
        self.X.copy_(x_T.expand_as(self.X))
        if noise is not None:
            self.noise.copy_(noise)
        if cond is not None:
            self.cond.copy_(cond)
        self.b.zero_()
        self.done.zero_()
        guess = torch.zeros_like(x_T) if x0_guess is None else x0_guess.to(x_T)
        full = torch.full_like(self.b, self.p)
        self._roll_out(self.b, full, x_T, guess)

    def _capture(self, inputs: tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]) -> None:
        side = torch.cuda.Stream(device=self.table.device)
        side.wait_stream(torch.cuda.current_stream(self.table.device))
        with torch.cuda.stream(side):  # warm-up (cuDNN / cuBLAS workspaces) on real inputs
            self._load(*inputs)
            for _ in range(_WARMUP_ITERATIONS):
                self._iteration()
        torch.cuda.current_stream(self.table.device).wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._iteration()

    @torch.no_grad()
    def sample(
        self, x_T: Tensor, noise: Tensor | None, cond: Tensor | None, x0_guess: Tensor | None = None
    ) -> SampleResult:
        """Sample (B, H, D) from ``x_T`` with pre-drawn ``noise`` (K, B, H, D) and ``cond`` (B, C).

        Returns:
            `SampleResult` (``rows_evaluated`` counts the padded rows: B·window per iteration).
        """
        start = time.perf_counter()
        check_inputs(x_T, self.table, noise, cond)
        if tuple(x_T.shape) != (self.B, *self.rest):
            raise ValueError(f"x_T must have shape {(self.B, *self.rest)}, got {tuple(x_T.shape)}")
        if (cond is None) != (self.cond_dim == 0):
            want = "None" if self.cond_dim == 0 else f"({self.B}, {self.cond_dim})"
            raise ValueError(f"cond must be {want}")
        if self.graph and self._graph is None:
            self._capture((x_T, noise, cond, x0_guess))
        self._load(x_T, noise, cond, x0_guess)
        iterations = 0
        while iterations < self.K:
            if self._graph is not None:
                self._graph.replay()
            else:
                self._iteration()
            iterations += 1
            if bool(self.done):  # the one host synchronisation per iteration
                break
        R = self.B * self.p
        sample = self.X[self.K].clone()  # (B, H, D)
        return SampleResult(
            sample=sample,
            iterations=iterations,
            model_calls=iterations,
            rows_evaluated=iterations * R,
            sequential_passes=iterations,
            converged=torch.ones(self.B, dtype=torch.bool),
            all_converged=True,
            final_residual=torch.zeros(self.B),
            wall_time_s=finish_timing(sample, start),
            rows_per_call=(R,) * iterations,
        )
