"""ParaDiGMS parallel sampling: sliding-window Picard iteration over the pre-drawn-noise trajectory.

Shih et al., "Parallel Sampling of Diffusion Models" (NeurIPS 2023). With x_T and every step's noise
drawn up front, sampling is the deterministic recursion x_{j+1} = step_j(x_j); Picard iteration solves it
for a window of p consecutive steps at a time, with one batched denoiser call per iteration. The fixed
point is the sequential sampler's trajectory for the same noise, whatever the window, tolerance or
initial guess; those only change the number of iterations.

Conventions (as the reference; see `sample_picard`): buffer slot j holds the sample after j steps (slot 0
= x_T, slot K = the result); step index j belongs to the step *leaving* slot j (its timestep, noise and
variance); a window [b, e) evaluates the rows at slots b..e-1 and refreshes slots b+1..e.

Bookkeeping runs on the host: the window starts are needed there anyway (they fix the next call's row
count), so the convergence test and the slide are plain Python over ints and the changes' norms (right
after a network call each NumPy or PyTorch call costs several times a few Python operations: its code
is no longer in the CPU's caches), and the device does only the gathers, the step, the cumulative
update and the write-back.
With one sample (the latency case) every row set of an iteration is a run of consecutive buffer rows,
read and written as views instead of gathered; what depends on the table alone (the convergence
thresholds, the Parareal carry weights) is built once per table (`StepTable.cached`). Every operation
outside the denoiser costs time a call does not (docs/benchmarks.md records the share).

Library module: imports torch and numpy only (no hydra, no zarr).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor

from parapolicy.policy.diffusion.denoiser import Denoiser
from parapolicy.policy.diffusion.inpaint import Inpaint, start_inpainting
from parapolicy.policy.diffusion.options import ON_MAX_ITERS, REFILL_RULES, UPDATE_RULES
from parapolicy.policy.diffusion.parareal import HeldX0Carry, LinearCarry
from parapolicy.policy.diffusion.rollout import HeldRollout
from parapolicy.policy.diffusion.sequential import SampleResult, check_inputs, finish_timing
from parapolicy.policy.diffusion.step import held_x0_affine, predict_x0, step
from parapolicy.policy.diffusion.step_table import StepTable

__all__ = ["change_norm_thresholds", "sample_picard"]


class _Rows:
    """Some rows of a flat (N, ...) tensor: a run of consecutive rows (a slice, read as a view) or an
    index tensor. With one sample every row set of an iteration is a run, and a view costs no copy."""

    __slots__ = ("key",)

    def __init__(self, key: Tensor | slice) -> None:
        self.key = key

    def take(self, t: Tensor) -> Tensor:
        """The rows of ``t`` (for a run, a view of ``t``: read it before writing those rows of ``t``)."""
        key = self.key
        return t[key] if isinstance(key, slice) else t.index_select(0, key)

    def put_(self, t: Tensor, values: Tensor) -> None:
        """Write ``values`` into these rows of ``t``."""
        key = self.key
        if isinstance(key, slice):
            t[key] = values
        else:
            t.index_copy_(0, key, values)


class _Trajectory:
    """The guess buffer X (K+1 slots x B samples) with flat row access (row = slot·B + sample), the
    step noise in the same row order, the x̂₀ cache of multistep rules and the known rows (inpainting)."""

    def __init__(
        self,
        table: StepTable,
        x_T: Tensor,
        noise: Tensor | None,
        init: Tensor | None,
        inpaint: Inpaint | None,
        max_rows: int,
        norm_dtype: torch.dtype,
    ) -> None:
        K, B = table.num_steps, x_T.shape[0]
        self.table, self.K, self.B, self.rest = table, K, B, tuple(x_T.shape[1:])
        self.device = x_T.device
        self.X = torch.empty((K + 1, B, *self.rest), dtype=x_T.dtype, device=self.device)  # (K+1, B, H, D)
        if init is None:
            self.X.copy_(x_T.expand_as(self.X))
        else:
            self.X.copy_(init.to(self.X))
            self.X[0] = x_T
        self.flat = self.X.view((K + 1) * B, *self.rest)  # ((K+1)·B, H, D) view
        self.sample_dims = tuple(range(1, 1 + len(self.rest)))  # a row's dims (H, D)
        self.noise = None
        if noise is not None and table.is_stochastic:
            self.noise = noise.reshape(K * B, *self.rest)  # (K·B, H, D), row = step·B + sample
        # Multistep rules: x̂₀ of each slot's last evaluation, row = step·B + sample, after B zero rows
        # (a "slot -1"), so that the x̂₀ history of one sample's window is the view x0_store[b : b+R].
        self.x0_store = self.x0_cache = None
        if table.uses_history:
            self.x0_store = torch.zeros(((K + 1) * B, *self.rest), dtype=x_T.dtype, device=x_T.device)
            self.x0_cache = self.x0_store[B:]  # (K·B, H, D) view
        self.inpaint = inpaint
        # the norms of an iteration's changes (in the convergence test's dtype), in host memory NumPy reads
        self.norms = self.norms_host = None
        if self.device.type == "cpu":
            self.norms = torch.empty(max_rows, dtype=norm_dtype)
            self.norms_host = self.norms.numpy()
        self.held = HeldRollout.of(table, len(self.rest))

    def known(self, samples: Tensor) -> Inpaint | None:
        """The known rows of each entry's sample ((E,) sample indices); one sample's broadcast as is."""
        if self.inpaint is None or self.B == 1:
            return self.inpaint
        return self.inpaint.rows(samples)

    def index(self, rows: np.ndarray) -> Tensor:
        """Host int64 rows -> device index tensor."""
        return torch.from_numpy(rows).to(self.device)

    def roll_out(
        self, samples: list[int], ends: list[int], counts: list[int], x_end: Tensor, x0: Tensor | None
    ) -> None:
        """Fill slots e+1 .. e+count of each sample by stepping from X[e] with x̂₀ held fixed (no network).

        With x̂₀ held, step m is the affine map x -> a_m·x + c_m (`held_x0_affine`), so the M steps
        after slot e are applied in closed form, x_{e+1+k} = A_k·x_e + Σ_{j<=k} W_kj·c_{e+j}
        (`HeldRollout`): a few operations whatever M, instead of M.

        Args:
            samples: the sample of each of the A entries.
            ends: each entry's slot e the roll-out starts from (its value is ``x_end``).
            counts: each entry's number of slots to fill after e (0 allowed; e + count <= K).
            x_end: (A, H, D) the value at slot e.
            x0: (A, H, D) the held data prediction; None holds 0 (the default first guess).
        """
        M = max(counts, default=0)
        if M == 0:
            return
        A, B = len(samples), self.B
        if B == 1:  # one sample: steps e .. e+M-1 fill slots e+1 .. e+M, runs of consecutive rows
            e = ends[0]
            rows, gain, weights = self.held.run(e, M)  # StepRows (M,), (1, M, 1), (1, M, M)
            z = None if self.noise is None else self.noise[e : e + M]  # (M, H, D)
            if x0 is None and z is None:  # x̂₀ = 0 and no noise: every c is 0, x_{e+1+k} = A_k·x_e
                filled = gain * x_end.view(1, 1, -1)  # (1, M, H·D)
            else:
                _, c = held_x0_affine(self.table, rows, torch.zeros_like(x_end) if x0 is None else x0, z)
                filled = HeldRollout.apply(gain, weights, x_end, c.view(1, M, -1))  # (1, M, H·D)
            self.flat[e + 1 : e + 1 + M] = filled.view(M, *self.rest)
            return
        x0 = torch.zeros_like(x_end) if x0 is None else x0
        samples, ends, counts = (np.array(v, dtype=np.int64) for v in (samples, ends, counts))  # (A,) each
        k = np.arange(M)[:, None]  # (M, 1)
        src = np.minimum(ends[None, :] + k, self.K - 1)  # (M, A) step leaving the previous slot
        valid = np.flatnonzero((k < counts[None, :]).ravel())  # entries that land inside the window
        dest_h = ((src + 1) * B + samples[None, :]).ravel()[valid]
        n = M * A
        noise_h = (src * B + samples[None, :]).ravel()  # (M·A,) noise row of each entry
        idx = self.index(np.concatenate([src.ravel(), noise_h, valid, dest_h, ends]))
        steps, noise_rows = idx[:n], idx[n : 2 * n]
        inside, dest = idx[2 * n : 2 * n + valid.size], idx[2 * n + valid.size : -A]
        z = None if self.noise is None else self.noise.index_select(0, noise_rows).view(M, A, *self.rest)
        rows = self.table.rows(steps, trailing=len(self.rest)).view(M, A)  # entry (j, s) at [j, s]
        _, c = held_x0_affine(self.table, rows, x0.expand(M, *x0.shape), z)  # (M, A, H, D)
        gain, weights = self.held.weights(idx[-A:], M)  # (A, M, 1), (A, M, M)
        c = c.transpose(0, 1).reshape(A, M, -1)  # (A, M, H·D)
        filled = HeldRollout.apply(gain, weights, x_end, c)  # (A, M, H·D)
        filled = filled.transpose(0, 1).reshape(M * A, *self.rest)  # (M·A, H, D), row = position·A + entry
        self.flat.index_copy_(0, dest, filled if valid.size == n else filled.index_select(0, inside))


def sample_picard(
    denoise: Denoiser,
    x_T: Tensor,
    table: StepTable,
    noise: Tensor | None,
    cond: Tensor | None,
    *,
    window: int,
    tol: float,
    max_iters: int | None = None,
    abs_floor: float = 0.0,
    on_max_iters: str = "finish_sequential",
    init: Tensor | None = None,
    x0_guess: Tensor | None = None,
    refill: str = "x0_rollout",
    update: str = "picard",
    inpaint: Inpaint | None = None,
    coarse_jacobian: Tensor | None = None,
) -> SampleResult:
    """Sample with sliding-window Picard iteration (ParaDDPM / ParaDDIM / ParaDPMSolver++ by table kind).

    One iteration, per active sample s with window start b_s and length L_s = min(window, K - b_s):

    1. Rows: the current guesses X[b_s .. b_s+L_s-1] of every active sample, concatenated (sample-major)
       into one flat batch; ONE `denoise` call evaluates them all.
    2. Step: `step.step` on all rows at once, including σ_j·z_j: y_j = step_j(X[j]) is the full
       sequential update of slot j's current guess.
    3. Update (ParaDiGMS' cumulative drift): new X[b+1+i] = X[b] + Σ_{j=b}^{b+i} (y_j - X[j]), i.e. the
       trusted start plus the cumulative drift step_no_noise(X[j]) - X[j] plus the cumulative noise. It is
       evaluated in the algebraically equal form y_{b+i} + Σ_{j<i} (y_{b+j} - X[b+1+j]), so the first
       refreshed slot equals the sequential step bitwise (window = 1 reproduces the sequential sampler
       exactly, and at tol = 0 every accepted slot is the sequential value).
       With ``update="parareal"`` the change of slot b+i is carried to slot b+i+1 scaled by a_{b+i},
       the slope of step b+i with x̂₀ held fixed (the model-free coarse propagator of the roll-out),
       instead of 1: new X[b+1+i] = y_{b+i} + Σ_{j<i} (Π_{m=j+1..i} a_{b+m}) (y_{b+j} - X[b+1+j]). This
       is Parareal with the held-x̂₀ step as its coarse solver: the same fixed point and the same
       exactness argument (an unchanged prefix adds exactly 0), but a change made early in a window is
       damped as the true step damps it, so wide windows converge in far fewer iterations. With
       ``coarse_jacobian`` the slope is the matrix a_j·I + b_j·J_j of the step with x̂₀ following x
       (`coarse.linear_slopes`), applied one window position after the other.
    4. Error of refreshed slot j: mean over the sample's elements of (new - old)², compared with
       tol² · table.tol_variance[j] (the variance of the step leaving slot j; for DDIM/DPM-Solver++ the
       DDPM-equivalent η=1 variance; where that is 0 at the end of the schedule, the last positive earlier
       variance; see `make_step_table`). A slot also passes when its RMS change is <= `abs_floor`. It is
       tested as the equivalent bound on the change's norm (`change_norm_thresholds`), so nothing
       divides by 0 and a NaN change counts as unconverged. The
       final slot K is never tested (nothing leaves it; accepting slot K-1 ends the sample either way).
    5. Slide: b_s += min(first unconverged window position + 1, window), where a fully converged window
       counts position L_s (the sentinel). The whole window is written back; slots newly exposed by the
       slide (up to the new window end) are refilled by the `refill` rule unless `init` was given, in
       which case the caller's guesses for those slots are kept.
    6. A sample whose start reaches K is done and drops out: the rows per call shrink accordingly. Each
       sample has its own window (no max over the batch), so a batched call returns what per-sample calls
       would return for a row-independent denoiser, up to float rounding (one sample sums a window's
       changes with one matrix product, several with a cumulative sum: the iterates may differ in the
       last bits, and so may the iteration where a slot passes).

    DPM-Solver++(2M): the x̂₀ history of window row i > 0 is the previous row's x̂₀ from the same call;
    for a window's first row it is the x̂₀ cached when that previous slot was last evaluated (it was a
    row of the iteration that moved the window there and its value was accepted, so at convergence it is
    the fixed-point value). Only step 0 (and a final step onto clean data) is first order, exactly as in
    the sequential sampler, so both define the same fixed point and tol = 0 parity holds. (The reference
    ParaDPMSolver restarts at first order at every window start instead, which makes its result depend on
    where windows start.)

    Host synchronisation: one device-to-host copy per iteration (the R change norms; the slide is
    decided on the host, which also fixes the next call's row count).

    Args:
        denoise: the denoiser callable (flat batch).
        x_T: (B, H, D) initial sample.
        table: step table on the device of `x_T`.
        noise: (K, B, H, D) pre-drawn standard-normal step noise (required for DDPM, ignored otherwise).
        cond: (B, C) conditioning or None; row r gets its sample's row.
        window: p >= 1, the maximum number of steps evaluated per sample per iteration (capped at K).
        tol: relative tolerance >= 0 (RMS change <= tol·σ); 0 demands an exactly unchanged slot.
        max_iters: cap on Picard iterations (None: no cap; the iteration count is always <= K).
        abs_floor: absolute RMS change below which a slot counts as converged (0 disables it).
        on_max_iters: what unfinished samples get at the cap: "finish_sequential" runs their remaining
            steps with the sequential update from their last trusted slot b_s (exact for the accepted
            prefix; counted in `sequential_passes`); "return_iterate" returns the current guess of slot K.
            Either way those samples are flagged `converged = False`.
        init: (K+1, B, H, D) initial guess of the whole trajectory; slot 0 is replaced by `x_T`, and
            exposed slots keep the guess (no refill). The result does not depend on it, only the
            iteration count. Default: the first window as `x0_guess` says, every other slot = x_T.
        x0_guess: (B, H, D) a guess of the sample (not with `init`): the first window is rolled out
            from x_T holding it as x̂₀ (model-free, as the "x0_rollout" refill). Default: 0, the centre
            of the normalised action range (the network's x̂₀ at high noise is close to the data mean),
            with the "x0_rollout" refill; none (x_T copies, as ParaDiGMS) with "window_end". A warm
            start passes the previous control step's plan shifted along the horizon (iteration counts
            of each choice: docs/benchmarks.md).
        refill: how slots newly exposed by a slide are guessed: "window_end" copies the value at the old
            window end (ParaDiGMS; the first window is x_T copies); "x0_rollout" rolls the trajectory
            forward from the old window end with the shared step function, holding the x̂₀ predicted at
            the window's last row fixed and adding the pre-drawn noise (ParaSolver's model-free
            initialisation). No network call either way; the fixed point is unchanged.
        update: "picard" (ParaDiGMS: a slot's change carries to the next slot with slope 1) or
            "parareal" (scaled by the held-x̂₀ slope of the step; see step 3). The fixed point is the
            same; docs/benchmarks.md records the iteration counts of both.
        inpaint: known rows of the sample (see `inpaint`): imposed on x_T and inside the shared step of
            every row, so the fixed point is the sequential inpainted sample. The held x̂₀ of the
            roll-outs (first window and refill) is pulled onto the known rows too (a better guess only).
        coarse_jacobian: (K, H·D, H·D) ∂x̂₀/∂x per step (`coarse.x0_jacobian`), for the Parareal
            update's linear coarse model (``update="parareal"`` only). It changes the iteration count,
            not the fixed point.

    Returns:
        `SampleResult` with the sample (B, H, D), the converged trajectory (K+1, B, H, D) and statistics
        (`iterations` = Picard iterations; `model_calls` = `sequential_passes` = iterations plus fallback
        steps; `rows_evaluated` and `rows_per_call` count denoiser rows).
    """
    start = time.perf_counter()
    check_inputs(x_T, table, noise, cond)
    _check_arguments(x_T, table, window, tol, max_iters, abs_floor, on_max_iters, init, x0_guess, refill)
    if update not in UPDATE_RULES:
        raise ValueError(f"update must be one of {UPDATE_RULES}, got {update!r}")
    if coarse_jacobian is not None and update != "parareal":
        raise ValueError(f"coarse_jacobian needs update='parareal', got update={update!r}")
    K, B = table.num_steps, x_T.shape[0]
    p = min(window, K)
    x_T, inpaint = start_inpainting(table, x_T, inpaint)
    n = math.prod(x_T.shape[1:])  # elements per sample
    test = table.cached(
        ("picard_test", tol, abs_floor, x_T.dtype, n),
        lambda: _ConvergenceTest(table, tol, abs_floor, x_T.dtype, n),
    )
    traj = _Trajectory(table, x_T, noise, init, inpaint, max_rows=p * B, norm_dtype=test.torch_dtype)
    refill = "none" if init is not None else refill  # the caller's guesses are kept
    if init is None and (x0_guess is not None or refill == "x0_rollout"):  # the first window
        guess = None if x0_guess is None else x0_guess.to(x_T)  # None: 0
        if inpaint is not None:
            guess = inpaint.pull(torch.zeros_like(x_T) if guess is None else guess)
        traj.roll_out(list(range(B)), [0] * B, [p] * B, x_T, guess)
    slopes: HeldX0Carry | LinearCarry | None = None
    if coarse_jacobian is not None:
        slopes = LinearCarry.for_jacobian(table, coarse_jacobian, p)
    elif update == "parareal":
        slopes = table.cached(("parareal_slopes", p), lambda: HeldX0Carry(table, p))

    b_h = [0] * B  # each sample's window start (trusted slot); host ints, as every decision below
    residual = np.zeros(B, dtype=test.dtype)  # (B,) last window's max normalised RMS change
    iterations = 0
    rows_per_call: list[int] = []
    while True:
        L = [min(K - b, p) for b in b_h]  # window lengths; 0 = done (6. finished samples drop out)
        R = sum(L)
        if R == 0 or (max_iters is not None and iterations >= max_iters):
            break
        # 1. Rows of every active window, sample-major, in ONE denoiser call.
        w = _window(traj, b_h, L, R, p)
        x_r = w.flat.take(traj.flat)  # (R, H, D)
        c_r = None if cond is None else (cond.expand(w.R, -1) if B == 1 else cond.index_select(0, w.s_t))
        out = denoise(x_r, w.timesteps, c_r)  # (R, H, D)
        # 2. The shared step on every row (full update, pre-drawn noise included).
        y, x0_r = _step_rows(traj, w, x_r, out)
        # 3. Picard update of the refreshed slots, written back.
        new, norm_h = _picard_update(traj, w, y, p, test.torch_dtype, slopes)
        # 4. Convergence of each refreshed slot: each window's first unconverged position.
        first_bad = test.first_unconverged(w, norm_h, residual)
        # 5. Slide each window to its first unconverged slot and guess the newly exposed slots.
        _slide(traj, w, first_bad, b_h, p, new, x0_r, refill)
        iterations += 1
        rows_per_call.append(w.R)

    converged = [b >= K for b in b_h]
    all_converged = all(converged)
    fallback = 0
    if on_max_iters == "finish_sequential" and not all_converged:
        fallback = _finish_sequential(traj, denoise, cond, b_h, rows_per_call)
    X = traj.X
    return SampleResult(
        sample=X[K],
        iterations=iterations,
        model_calls=iterations + fallback,
        rows_evaluated=sum(rows_per_call),
        sequential_passes=iterations + fallback,
        converged=torch.from_numpy(np.array(converged)),  # (B,) bool
        all_converged=all_converged,
        final_residual=torch.from_numpy(residual),
        wall_time_s=finish_timing(X, start),
        rows_per_call=tuple(rows_per_call),
        trajectory=X,
    )


def _check_arguments(
    x_T: Tensor,
    table: StepTable,
    window: int,
    tol: float,
    max_iters: int | None,
    abs_floor: float,
    on_max_iters: str,
    init: Tensor | None,
    x0_guess: Tensor | None,
    refill: str,
) -> None:
    """The Picard-specific argument checks of `sample_picard` (raises ValueError naming the argument)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not (tol >= 0 and math.isfinite(tol)) or not (abs_floor >= 0 and math.isfinite(abs_floor)):
        raise ValueError(f"tol and abs_floor must be finite and >= 0, got {tol}, {abs_floor}")
    if max_iters is not None and max_iters < 0:
        raise ValueError(f"max_iters must be >= 0 or None, got {max_iters}")
    if on_max_iters not in ON_MAX_ITERS:
        raise ValueError(f"on_max_iters must be one of {ON_MAX_ITERS}, got {on_max_iters!r}")
    if refill not in REFILL_RULES:
        raise ValueError(f"refill must be one of {REFILL_RULES}, got {refill!r}")
    K, B, rest = table.num_steps, x_T.shape[0], tuple(x_T.shape[1:])
    if init is not None and tuple(init.shape) != (K + 1, B, *rest):
        raise ValueError(f"init must have shape {(K + 1, B, *rest)}, got {tuple(init.shape)}")
    if x0_guess is not None:
        if init is not None:
            raise ValueError("give init (a whole trajectory) or x0_guess (a sample guess), not both")
        if tuple(x0_guess.shape) != (B, *rest):
            raise ValueError(f"x0_guess must have shape {(B, *rest)}, got {tuple(x0_guess.shape)}")


class _Window:
    """Step 1's row layout (host values, and the device row sets they index) for one iteration.

    Row r (sample-major) is window position ``i_r`` of active sample ``s_r``, at buffer slot ``slot_r``.
    The host decisions read ``spans``: (sample, window start, first row, length) of each active
    sample, as Python ints (a NumPy call costs several times a few Python operations right after a
    network call). Row sets: ``slot`` (step positions), ``flat`` (buffer rows read), ``next`` (buffer
    rows refreshed), ``grid`` / ``grid1`` (cells i / i+1 of the (A, p+1) update grid) and ``last``
    (each active sample's last row); with one sample they are runs of consecutive rows, read as views
    (`_Rows`). Also the rows' step coefficients (``rows``) and timesteps and, with several samples,
    the host arrays the multistep history reads: ``flat_r`` (each row's buffer row) and ``first_row``
    (each window's first row).
    """

    __slots__ = (
        "A", "R", "first_row", "flat", "flat_r", "grid", "grid1", "last", "next", "rows", "s_t", "slot",
        "spans", "starts", "timesteps",
    )  # fmt: skip

    def __init__(self, traj: _Trajectory, b_h: list[int], L: list[int], R: int, p: int) -> None:
        B, table = traj.B, traj.table
        self.spans: list[tuple[int, int, int, int]] = []  # (sample, start, first row, length)
        row = 0
        for s, (b, n) in enumerate(zip(b_h, L, strict=True)):
            if n:
                self.spans.append((s, b, row, n))
                row += n
        self.A, self.R = len(self.spans), R
        self.starts: Tensor | int  # window starts of the active samples ((A,) on the device, or b)
        if B == 1:  # one sample: slot = flat row, and every row set is a run
            b = b_h[0]
            self.slot = self.flat = _Rows(slice(b, b + R))
            self.next, self.last = _Rows(slice(b + 1, b + 1 + R)), _Rows(slice(R - 1, R))
            self.grid, self.grid1 = _Rows(slice(0, R)), _Rows(slice(1, R + 1))
            self.starts, self.s_t, self.flat_r, self.first_row = b, None, None, None
            self.rows = table.rows(slice(b, b + R), trailing=len(traj.rest))  # the steps' coefficients
            self.timesteps = table.timesteps[b : b + R]  # (R,)
            return
        act, starts, first, La = np.array(self.spans, dtype=np.int64).T  # (A,) each
        i_r = np.arange(R) - np.repeat(first, La)  # (R,) window position of each row
        s_r = np.repeat(act, La)  # (R,)
        slot_r = np.repeat(starts, La) + i_r  # (R,) step index in 0..K-1
        self.flat_r = flat_r = slot_r * B + s_r  # (R,)
        self.first_row = i_r == 0  # (R,) each window's first row
        grid_r = np.repeat(np.arange(self.A), La) * (p + 1) + i_r  # (R,) row's cell in the (A, p+1) grid
        rows = np.concatenate([slot_r, flat_r, flat_r + B, grid_r, grid_r + 1, s_r, starts, first + La - 1])
        idx = traj.index(rows)
        slot_t, flat_t, next_t, grid_t, grid1_t, self.s_t = idx[: 6 * R].view(6, R)
        self.slot, self.flat, self.next = _Rows(slot_t), _Rows(flat_t), _Rows(next_t)
        self.grid, self.grid1 = _Rows(grid_t), _Rows(grid1_t)
        self.starts, self.last = idx[6 * R : 6 * R + self.A], _Rows(idx[6 * R + self.A :])
        self.rows = table.rows(slot_t, trailing=len(traj.rest))  # the steps' coefficients
        self.timesteps = table.timesteps.index_select(0, slot_t)  # (R,)


def _window(traj: _Trajectory, b_h: list[int], L: list[int], R: int, p: int) -> _Window:
    """Step 1's `_Window`; with one sample it depends on the window start and length alone and is
    read-only, so it is kept per table (`StepTable.cached`) and reused by every later plan."""
    if traj.B != 1:
        return _Window(traj, b_h, L, R, p)
    key = ("picard_window", b_h[0], R, p, len(traj.rest))
    return traj.table.cached(key, lambda: _Window(traj, b_h, L, R, p))


def _step_rows(traj: _Trajectory, w: _Window, x_r: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
    """Step 2: y_j = step_j(X[j]) on every row, and the rows' x̂₀ (each (R, H, D)).

    Multistep rules: a window's first row takes the x̂₀ cached when the previous slot was last
    evaluated, every other row the row above's (same call); the cache is refreshed with these rows.
    """
    table, R, rows = traj.table, w.R, w.rows
    prev_x0 = None
    x0_pre = None
    if traj.x0_cache is not None:
        x0_pre = predict_x0(table, rows, x_r, out)  # (R, H, D)
        if isinstance(w.starts, int):  # one sample: row i reads slot b+i-1's x̂₀, once this is stored
            w.flat.put_(traj.x0_cache, x0_pre)
            prev_x0 = traj.x0_store[w.starts : w.starts + R]  # (R, H, D) view; slot -1 (zeros) for b = 0
        else:
            cached = traj.x0_cache.index_select(0, traj.index(np.maximum(w.flat_r - traj.B, 0)))  # (R, H, D)
            starts = traj.index(w.first_row).view(R, *(1,) * len(traj.rest))  # (R, 1, 1) bool
            prev_x0 = torch.where(starts, cached, x0_pre.roll(1, dims=0))
            w.flat.put_(traj.x0_cache, x0_pre)
    z_r = None if traj.noise is None else w.flat.take(traj.noise)  # (R, H, D)
    res = step(table, rows, x_r, out, z_r, prev_x0=prev_x0, inpaint=traj.known(w.s_t), x0_hat=x0_pre)
    return res.prev_sample, res.x0_hat


def _picard_update(
    traj: _Trajectory,
    w: _Window,
    y: Tensor,
    p: int,
    err_dtype: torch.dtype,
    slopes: HeldX0Carry | LinearCarry | None,
) -> tuple[Tensor, np.ndarray]:
    """Step 3: new X[b+1+i] = y_{b+i} + Σ_{j<i} w_ij (y_{b+j} - X[b+1+j]), written back for the window.

    The differences sit on an (A, p+1) grid whose first column stays 0. Picard (``slopes`` None):
    w_ij = 1, an exclusive cumulative sum. Parareal: w_ij = Π_{m=j+1..i} a_{b+m}, one small batched
    matrix product per iteration (`HeldX0Carry`), or the matrix slopes of the linear coarse model
    (`LinearCarry`). With one window (the latency case) every rule skips the grid: the scalar rules
    as new = y + W·(y - old), one fused matrix product with the (R, R) weights, the linear model as
    `LinearCarry.window` (each operation outside the network costs most right after a network
    call). Either way a prefix of unchanged slots contributes
    exactly 0. The change is measured before the write-back (``old`` is a view of those rows for one
    sample).

    Returns:
        (new (R, H, D), the (R,) norm of each refreshed slot's change on the host: the one
        device-to-host copy of the iteration).
    """
    rest, Xf = traj.rest, traj.flat
    old = w.next.take(Xf)  # (R, H, D) previous guesses of the refreshed slots (a view for one sample)
    if w.A == 1 and isinstance(slopes, LinearCarry):  # one window: no grid
        R, b = w.R, w.spans[0][1]  # b: the window start, on the host
        new = (y.view(R, -1) + slopes.window(b, (y - old).view(R, -1))).view_as(y)  # (R, H, D)
    elif w.A == 1:  # one window: one fused matrix product
        R, b = w.R, w.spans[0][1]
        if slopes is None:  # Picard: row i adds the changes of rows j < i
            key = ("picard_carry", R, y.dtype)
            weights = traj.table.cached(key, lambda: y.new_ones(R, R).tril(-1))  # (R, R)
        else:  # Parareal: row i adds the changes of rows j < i, scaled by the slopes between
            weights = slopes.window(b, R)  # (R, R)
        new = torch.addmm(y.view(R, -1), weights, (y - old).view(R, -1)).view_as(y)  # (R, H, D)
    else:
        grid = y.new_zeros((w.A * (p + 1), *rest))  # (A·(p+1), H, D)
        w.grid1.put_(grid, y - old)
        if slopes is None:
            carried = grid.view(w.A, p + 1, *rest).cumsum(1)  # (A, p+1, H, D)
        else:
            carried = slopes.carry(w.starts, grid.view(w.A, p + 1, -1), max(n for *_, n in w.spans))
        new = y + w.grid.take(carried.view(w.A * (p + 1), *rest))  # (R, H, D)
    if traj.norms is None:
        norm = torch.linalg.vector_norm(new - old, dim=traj.sample_dims, dtype=err_dtype).cpu().numpy()
    else:  # on the CPU, into host memory shared with NumPy: no copy, no conversion (out= takes no grad)
        change = (new - old).detach()
        torch.linalg.vector_norm(change, dim=traj.sample_dims, dtype=err_dtype, out=traj.norms[: w.R])
        norm = traj.norms_host[: w.R]  # (R,)
    w.next.put_(Xf, new)  # after the change is measured: ``old`` may be a view of these rows
    return new, norm


def change_norm_thresholds(
    table: StepTable, tol: float, abs_floor: float, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """(K+1,) float64 thresholds on the norm of a refreshed slot's change over a sample's n elements:
    slot j passes when ‖change‖ <= thr[j] = √(n·max(tol²·σ²_j, floor²)), i.e. when its RMS change is
    within max(tol·σ_j, floor) (σ²_j: `table.tol_variance`, the step leaving slot j; 1 at slot K);
    and (K+1,) scale[j] = √(n·σ²_j), the norm of an RMS change of σ_j (for the residual)."""
    K = table.num_steps
    var = np.ones(K + 1)  # (K+1,) float64
    var[:K] = table.tol_variance.double().cpu().numpy()
    return np.sqrt(n * np.maximum(tol * tol * var, abs_floor**2)), np.sqrt(n * var)


class _ConvergenceTest:
    """Step 4 on the host: refreshed slot j passes when its mean squared change err² <= max(tol²·σ²_j,
    floor²), tested as ‖change‖ <= √(n·max(tol²·σ²_j, floor²)) on the change's norm over the sample's
    n elements (the norm is what the device hands over: no squaring or scaling per iteration).

    Thresholds are computed in float64 and rounded to the error dtype (kept as Python floats, exact,
    so the comparison is the error dtype's); indexed by slot (1..K), and slot K (nothing leaves it)
    always passes. A NaN change fails.
    """

    def __init__(self, table: StepTable, tol: float, abs_floor: float, dtype: torch.dtype, n: int) -> None:
        self.torch_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # of the error
        self.dtype = np.float64 if dtype == torch.float64 else np.float32
        thr, scale = change_norm_thresholds(table, tol, abs_floor, n)
        self.K = table.num_steps
        self.thr, self.scale = thr.astype(self.dtype).tolist(), scale.astype(self.dtype).tolist()  # (K+1,)

    def first_unconverged(self, w: _Window, norm_h: np.ndarray, residual: np.ndarray) -> list[int]:
        """Each active window's first unconverged position (its length when every slot passed), from
        the (R,) norms of the refreshed slots' changes; writes each active sample's max RMS change / σ
        (NaN if any change is NaN). Plain Python over the rows: cheaper than NumPy's calls here."""
        norms, thr, scale, K = norm_h.tolist(), self.thr, self.scale, self.K
        out = []
        for s, b, first, n in w.spans:
            bad, worst = n, 0.0
            for i, norm in enumerate(norms[first : first + n]):
                slot = b + 1 + i  # the refreshed slot
                if slot == K:  # the final slot: always accepted, ratio 0
                    break
                ratio = norm / scale[slot]
                if ratio > worst or ratio != ratio:  # a NaN ratio sticks
                    worst = ratio
                if bad == n and not norm <= thr[slot]:
                    bad = i
            residual[s] = worst
            out.append(bad)
        return out


def _slide(
    traj: _Trajectory,
    w: _Window,
    first_bad: list[int],
    b_h: list[int],
    p: int,
    new: Tensor,
    x0_r: Tensor,
    refill: str,
) -> None:
    """Step 5: b_s += min(first unconverged position + 1, p) (a converged window counts L_s), then
    guess the slots the slide exposes (up to the new window end) by the ``refill`` rule."""
    K = traj.K
    act, ends, counts = [], [], []  # per active sample: sample, old window end, newly exposed slots
    for (s, b, _, n), bad in zip(w.spans, first_bad, strict=True):
        b_h[s] = min(b + min(bad + 1, p), K)
        act.append(s)
        ends.append(b + n)
        counts.append(max(min(b_h[s] + p, K) - b - n, 0))
    if refill == "window_end" and any(counts):  # exposed slots e+1 .. get X[e]
        act_h, ends_h, counts_h = (np.array(v, dtype=np.int64) for v in (act, ends, counts))  # (A,) each
        k = np.arange(counts_h.max())[:, None]  # (M, 1)
        keep = k < counts_h[None, :]  # (M, A)
        dest = ((ends_h[None, :] + 1 + k) * traj.B + act_h[None, :])[keep]
        src = np.broadcast_to(np.arange(w.A)[None, :], keep.shape)[keep]
        traj.flat.index_copy_(0, traj.index(dest), w.last.take(new).index_select(0, traj.index(src)))
    elif refill == "x0_rollout" and any(counts):  # roll forward from X[e], holding the last x̂₀ fixed
        x0_last = w.last.take(x0_r)  # (A, H, D)
        if traj.inpaint is not None:  # onto the known rows: the inpainted step with x̂₀ held
            x0_last = traj.known(traj.index(np.array(act, dtype=np.int64))).pull(x0_last)
        traj.roll_out(act, ends, counts, w.last.take(new), x0_last)


def _finish_sequential(
    traj: _Trajectory, denoise: Denoiser, cond: Tensor | None, starts: list[int], rows_per_call: list[int]
) -> int:
    """Run the remaining steps of the samples still running at the cap (at least one) sequentially
    from their trusted slot b_s (``starts``; exact for the accepted prefix); returns the number of
    denoiser calls."""
    table, X, K, B, rest = traj.table, traj.X, traj.K, traj.B, traj.rest
    b_h = np.array(starts, dtype=np.int64)  # (B,)
    unfinished = np.nonzero(b_h < K)[0]
    X0_steps = None if traj.x0_cache is None else traj.x0_cache.view(K, B, *rest)  # (K, B, H, D)
    noise_steps = None if traj.noise is None else traj.noise.view(K, B, *rest)  # (K, B, H, D)
    order = unfinished[np.argsort(b_h[unfinished], kind="stable")]
    starts_h = b_h[order]  # ascending trusted slots
    sel_all = torch.as_tensor(order, device=X.device)
    calls = 0
    for i in range(int(starts_h[0]), K):
        sel = sel_all[: int(np.searchsorted(starts_h, i, side="right"))]  # samples with b_s <= i
        n = sel.shape[0]
        x = X[i, sel]  # (n, H, D)
        out = denoise(x, table.timesteps[i].expand(n), cond[sel] if cond is not None else None)
        prev = X0_steps[i - 1, sel] if X0_steps is not None and i > 0 else None
        z = noise_steps[i, sel] if noise_steps is not None else None
        res = step(table, i, x, out, z, prev_x0=prev, inpaint=traj.known(sel))
        X[i + 1, sel] = res.prev_sample
        if X0_steps is not None:
            X0_steps[i, sel] = res.x0_hat
        calls += 1
        rows_per_call.append(n)
    return calls
