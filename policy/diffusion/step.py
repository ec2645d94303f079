"""The one reverse-diffusion step shared by every sampler, plus `predict_x0` and `add_noise`.

`step` is vectorised over a leading "step" axis: `idx` gives each row's step position i (0..K-1) and the
coefficients are gathered from the `StepTable` by position, then broadcast over the trailing dims. The
sequential sampler calls it with an int (one step for the whole batch); the Picard sampler calls it once
per iteration on the whole window with a LongTensor of per-row step positions. There is no second copy of
this math anywhere in the package.

DPM-Solver++(2M) is a multistep method: its update at step i uses the data prediction x̂₀ of step i-1
(at the previous, noisier timestep), passed as `prev_x0`. The sequential sampler passes the previous
step's `StepOutput.x0_hat`; the Picard sampler passes the previous window row's x̂₀ (same batched call)
or, for a window's first row, the x̂₀ cached when that previous slot was last evaluated. Step 0 (and the
final step when it lands on clean data) is first order: its `dpm_coef_x0_prev` is 0, so `prev_x0` is
not needed there.

Library module: imports torch only (no hydra, no zarr).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor

from parapolicy.policy.diffusion.inpaint import Inpaint
from parapolicy.policy.diffusion.options import PREDICTION_TYPES
from parapolicy.policy.diffusion.step_table import StepRows, StepTable

__all__ = [
    "StepOutput",
    "add_noise",
    "held_x0_affine",
    "held_x0_coefficients",
    "model_out_from_x0",
    "predict_x0",
    "step",
]

StepIndex = Tensor | int | StepRows


class StepOutput(NamedTuple):
    """Result of one reverse step (a NamedTuple: built once per step, and cheaper than a dataclass).

    Attributes:
        prev_sample: x at the next (less noisy) level, same shape as the input `x_t`.
        x0_hat: the (clipped) data prediction x̂₀ made at this step, same shape as `x_t`.
    """

    prev_sample: Tensor
    x0_hat: Tensor


def _coef(table: StepTable, idx: StepIndex, ndim: int, name: str) -> Tensor:
    """A per-step coefficient of `table`, shaped to broadcast against a tensor with `ndim` dims.

    Args:
        table: the step table.
        idx: an int step position, a LongTensor of positions of shape (S,) (or any leading shape), or
            `StepRows` already gathered for the leading rows.
        ndim: number of dims of the tensor the coefficient multiplies; its leading dims match `idx`.
        name: the column (one of `table.column_names`); last, so `partial(_coef, table, idx, ndim)`
            is the ``coef(name)`` a rule's update receives.

    Returns:
        0-d tensor for an int `idx`, else shape idx.shape + (1,) * (ndim - idx.dim()).
    """
    if isinstance(idx, int):
        return table.columns[name][idx]  # () view: broadcasts against anything, no gather kernel
    c = idx.column(name) if isinstance(idx, StepRows) else table.columns[name][idx]  # (S, ...)
    return c if c.dim() == ndim else c.view(c.shape + (1,) * (ndim - c.dim()))  # (S, 1, ..., 1)


def _x0_and_eps(
    table: StepTable, idx: StepIndex, x_t: Tensor, model_out: Tensor, need_eps: bool
) -> tuple[Tensor, Tensor | None]:
    """x̂₀ (clipped if configured) and, when asked, ε̂ from the *unclipped* prediction (diffusers' DDIM)."""
    nd = x_t.dim()
    eps = None
    # 1. Data prediction from the model output (Ho et al. 2020, eq. 15; Salimans & Ho 2022 for v):
    #    epsilon: x̂₀ = x_t/√ᾱ - √(1/ᾱ - 1)·ε̂      sample: x̂₀ = out      v: x̂₀ = √ᾱ·x_t - √(1-ᾱ)·v̂
    if table.prediction_type == "epsilon":
        inv_sa, ratio = (
            _coef(table, idx, nd, "sqrt_recip_alpha_bar"),
            _coef(table, idx, nd, "sqrt_recipm1_alpha_bar"),
        )
        x0 = (inv_sa * x_t).addcmul_(ratio, model_out, value=-1)  # fused: fewer kernels
        eps = model_out
    elif table.prediction_type == "sample":
        x0 = model_out
        if need_eps:  # ε̂ = (x_t - √ᾱ·x̂₀)/√(1-ᾱ)
            sa, s1a = (
                _coef(table, idx, nd, "sqrt_alpha_bar"),
                _coef(table, idx, nd, "sqrt_one_minus_alpha_bar"),
            )
            eps = (x_t - sa * x0) / s1a
    elif table.prediction_type == "v_prediction":
        sa, s1a = _coef(table, idx, nd, "sqrt_alpha_bar"), _coef(table, idx, nd, "sqrt_one_minus_alpha_bar")
        x0 = sa * x_t - s1a * model_out
        if need_eps:  # ε̂ = √ᾱ·v̂ + √(1-ᾱ)·x_t
            eps = sa * model_out + s1a * x_t
    else:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {table.prediction_type!r}")
    # 2. Optional clipping of x̂₀ (DiffusionPolicy trains and samples with clip_sample=True, range 1).
    if table.clip_sample:  # in place: x0 is this function's own tensor unless it is `model_out`
        lo, hi = table.cached("clip_bounds", lambda: _clip_bounds(table))
        x0 = x0.clamp(lo, hi) if x0 is model_out else x0.clamp_(lo, hi)
    return x0, eps


def _clip_bounds(table: StepTable) -> tuple[Tensor, Tensor]:
    """(-clip_sample_range, clip_sample_range) as 0-d tensors on the table's device, for `_x0_and_eps`'s
    clamp: right after a network call its scalar form costs more to call than its tensor form."""
    bound = torch.tensor(table.clip_sample_range, dtype=table.dtype, device=table.device)
    return -bound, bound


def predict_x0(table: StepTable, idx: StepIndex, x_t: Tensor, model_out: Tensor) -> Tensor:
    """Data prediction x̂₀ from a model output, clipped as the table says.

    Args:
        table: the step table.
        idx: step position(s): an int, or a LongTensor (S,) matching the leading dim of `x_t`.
        x_t: (S, ...) or (...) noisy samples at the step's noise level.
        model_out: denoiser output, same shape as `x_t`.

    Returns:
        x̂₀ with the shape of `x_t`.
    """
    return _x0_and_eps(table, idx, x_t, model_out, need_eps=False)[0]


def model_out_from_x0(table: StepTable, idx: StepIndex, x_t: Tensor, x0: Tensor) -> Tensor:
    """The model output that predicts ``x0`` at ``x_t`` (the inverse of `predict_x0` before clipping).

    Used to roll a trajectory forward without the network while holding x̂₀ fixed.
    """
    nd = x_t.dim()
    if table.prediction_type == "sample":
        return x0
    sa, s1a = _coef(table, idx, nd, "sqrt_alpha_bar"), _coef(table, idx, nd, "sqrt_one_minus_alpha_bar")
    eps = (x_t - sa * x0) / s1a  # ε̂ = (x_t - √ᾱ·x̂₀)/√(1-ᾱ)
    if table.prediction_type == "epsilon":
        return eps
    return (eps - s1a * x_t) / sa  # v̂ from ε̂ = √ᾱ·v̂ + √(1-ᾱ)·x_t


def step(
    table: StepTable,
    idx: StepIndex,
    x_t: Tensor,
    model_out: Tensor,
    noise: Tensor | None = None,
    *,
    prev_x0: Tensor | None = None,
    inpaint: Inpaint | None = None,
    x0_hat: Tensor | None = None,
) -> StepOutput:
    """One reverse step x_{τ_i} -> x_{τ_{i+1}} for every row, by the table's update rule.

    Args:
        table: the step table (its `rule` (see `rules/`) is DDPM, DDIM η=0, DPM-Solver++(2M), ...).
        idx: step position(s) i: an int for the whole tensor, or a LongTensor (S,) giving each leading row
            its own step (e.g. x_t of shape (S, N, H, D) or (S, H, D)).
        x_t: samples at noise level τ_i.
        model_out: denoiser output for `x_t`, same shape.
        noise: standard-normal noise z of the shape of `x_t`, added as σ_i·z (stochastic rules only;
            ignored by the deterministic ones). None gives the noise-free update (the posterior mean
            for DDPM).
        prev_x0: multistep rules only (DPM-Solver++): x̂₀ of step i-1 for each row (same shape as
            `x_t`). Required for second-order steps; may be None for an int `idx` of a first-order
            step, or a tensor `idx` when every step of the table is first order.
        inpaint: known rows (see `inpaint`), entry r for leading row r of `x_t` (or broadcastable):
            after the update each row is pulled with its weight toward the update with x̂₀ held at its
            known value (the same `noise`). None: the plain step.
        x0_hat: the rows' `predict_x0`, when the caller has it already (rules that read ε̂ compute
            both again).

    Returns:
        `StepOutput(prev_sample, x0_hat)`; ``x0_hat`` is the model's x̂₀ (never the known values), so
        the DPM-Solver++ history is the same in every sampler.
    """
    nd = x_t.dim()
    rule = table.rule
    if x0_hat is None or rule.needs_eps:
        x0, eps = _x0_and_eps(table, idx, x_t, model_out, need_eps=rule.needs_eps)
    else:
        x0, eps = x0_hat, None
    if rule.uses_history and prev_x0 is None:  # host-side checks only (no device sync)
        if isinstance(idx, int) and table.orders[idx] > 1:
            raise ValueError(f"{rule.kind} step {idx} is of order {table.orders[idx]} and needs prev_x0")
        if not isinstance(idx, int) and max(table.orders) > 1:
            raise ValueError(f"{rule.kind} steps indexed by a tensor need prev_x0 (some are second order)")
    # 3. The rule's update (see its module under rules/), coefficients gathered by step position.
    prev = rule.update(
        partial(_coef, table, idx, nd),  # coef(name); a positional partial adds no Python frame
        x_t,
        x0,
        eps,
        noise if rule.is_stochastic else None,
        prev_x0 if rule.uses_history else None,
    )
    if inpaint is not None:
        # 4. Inpainting (see `inpaint`): x' <- x' + w·(a·x_t + b·x_known + σ·z - x'), x̂₀ held at x_known.
        a, c = held_x0_affine(table, idx, inpaint.target, noise)
        prev = torch.lerp(prev, torch.addcmul(c, a, x_t), inpaint.weight)
    return StepOutput(prev_sample=prev, x0_hat=x0)


def held_x0_coefficients(table: StepTable) -> tuple[Tensor, Tensor]:
    """(a, b), each (K,): with x̂₀ held fixed, step i maps x_t to a_i·x_t + b_i·x̂₀ + σ_i·z.

    Read off `step` itself (x_t = 1 with x̂₀ = 0, then x_t = 0 with x̂₀ = s, divided by s; the model
    output is the one that predicts that x̂₀, and for DPM-Solver++ the history x̂₀ is the same x̂₀), so
    the roll-out of the Picard refill uses exactly the update rules of the samplers. s is 1, or the
    clipping bound if that is smaller (a probe the clamp would cut reads a smaller b). `make_step_table`
    stores the result.
    """
    K = table.num_steps
    idx = torch.arange(K, device=table.device)  # (K,)
    one = torch.ones((K, 1), dtype=table.dtype, device=table.device)  # (K, 1)
    zero = torch.zeros_like(one)

    def through_step(x: Tensor, x0: Tensor) -> Tensor:
        out = model_out_from_x0(table, idx, x, x0)
        return step(table, idx, x, out, prev_x0=x0 if table.uses_history else None).prev_sample[:, 0]

    s = min(1.0, table.clip_sample_range) if table.clip_sample else 1.0  # a held x̂₀ inside the clamp
    return through_step(one, zero), through_step(zero, s * one) / s


def held_x0_affine(
    table: StepTable, idx: StepIndex, x0: Tensor, noise: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Step ``idx`` with x̂₀ held fixed as an affine map x_t -> a·x_t + c (no network call).

    Args:
        table: the step table.
        idx: step position(s), as for `step`.
        x0: (S, ...) the held data prediction of each row.
        noise: (S, ...) pre-drawn step noise (DDPM), or None.

    Returns:
        (a, c): ``a`` broadcastable against ``x0`` ((S, 1, ..., 1)), ``c`` of the shape of ``x0``.
    """
    nd = x0.dim()
    c = _coef(table, idx, nd, "rollout_coef_x0") * x0
    if noise is not None and table.is_stochastic:
        c = c + _coef(table, idx, nd, "sigma") * noise
    return _coef(table, idx, nd, "rollout_coef_x"), c


def add_noise(source: StepTable | Tensor, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """Forward noising for training: x_t = √ᾱ_t·x_0 + √(1-ᾱ_t)·ε (Ho et al. 2020, eq. 4).

    Here `t` holds training-timestep *values* (0..T-1), as drawn during training.

    Args:
        source: a `StepTable` (its `alphas_cumprod`) or a (T,) ᾱ tensor.
        x0: (B, ...) clean samples.
        eps: standard-normal noise, same shape as `x0`.
        t: (B,) int64 training timesteps.

    Returns:
        (B, ...) noisy samples in the dtype of `x0`.
    """
    ac = source.alphas_cumprod if isinstance(source, StepTable) else source
    a = ac.to(x0.device)[t.to(x0.device)].to(torch.float64)  # (B,)
    shape = a.shape + (1,) * (x0.dim() - a.dim())  # (B, 1, ..., 1)
    sa = a.sqrt().to(x0.dtype).view(shape)
    s1a = (1.0 - a).sqrt().to(x0.dtype).view(shape)
    return sa * x0 + s1a * eps
