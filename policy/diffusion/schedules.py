"""Noise schedules, inference timesteps and the per-step coefficient table (`StepTable`).

Pure functions only: nothing here holds state or changes an object after it is built.

- `make_alphas_cumprod` builds the training schedule ᾱ_t (float64) for `num_train_timesteps`.
- `make_timesteps` picks the inference timesteps τ_0 > τ_1 > ... > τ_{K-1} ("leading", "trailing" or
  "linspace" spacing, with the same conventions as diffusers' DDPM/DDIM schedulers).
- `make_step_table` turns (ᾱ, timesteps, sampler kind) into a frozen `StepTable` of per-step
  coefficients. Every rule about spacing, the terminal step and the noise/tolerance variance is applied
  here and nowhere else. Coefficients are indexed by the *step position* i (0..K-1), never looked up by
  timestep value at inference time.

Notation: ᾱ = alpha_bar = ᾱ(τ_i), ᾱ' = alpha_bar_prev = ᾱ(τ_{i+1}) (the noise level the step lands on),
α_s = ᾱ/ᾱ', β_s = 1 - α_s (the effective one-step beta when steps are skipped).

Library module: imports torch and numpy only (no hydra, no zarr).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "BetaSchedule",
    "PredictionType",
    "SamplerKind",
    "StepRows",
    "StepTable",
    "TimestepSpacing",
    "make_alphas_cumprod",
    "make_step_table",
    "make_timesteps",
]

BetaSchedule = Literal["squaredcos_cap_v2", "linear"]
TimestepSpacing = Literal["leading", "trailing", "linspace"]
SamplerKind = Literal["ddpm", "ddim", "dpmsolver++"]
PredictionType = Literal["epsilon", "sample", "v_prediction"]

_MAX_BETA = 0.999  # squaredcos_cap_v2 caps every beta here (Nichol & Dhariwal 2021, eq. 17)
# Per-step coefficient columns of `StepTable` that `StepRows` carries (all in the working dtype).
STEP_COLUMNS = (
    "alpha_bar",
    "alpha_bar_prev",
    "sqrt_alpha_bar",
    "sqrt_one_minus_alpha_bar",
    "sqrt_recip_alpha_bar",
    "sqrt_recipm1_alpha_bar",
    "posterior_coef_x0",
    "posterior_coef_xt",
    "posterior_variance",
    "sigma",
    "sqrt_alpha_bar_prev",
    "sqrt_one_minus_alpha_bar_prev",
    "lambda_",
    "lambda_prev",
    "dpm_coef_x",
    "dpm_coef_x0",
    "dpm_coef_x0_prev",
    "rollout_coef_x",
    "rollout_coef_x0",
)
_COLUMN_INDEX = {name: c for c, name in enumerate(STEP_COLUMNS)}
_MIN_TOL_VARIANCE = 1e-20  # ParaDiGMS' clamp; used only when no positive variance exists
_DPM_LOWER_ORDER_FINAL_BELOW = 15  # diffusers' lower_order_final applies to schedules shorter than this


def make_alphas_cumprod(
    kind: BetaSchedule,
    num_train_timesteps: int,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> Tensor:
    """Cumulative products ᾱ_t = Π_{s<=t} (1 - β_s) of a training noise schedule.

    Args:
        kind: "squaredcos_cap_v2" (Nichol & Dhariwal cosine schedule, betas capped at 0.999; `beta_start`
            and `beta_end` are ignored) or "linear" (betas evenly spaced in [beta_start, beta_end]).
        num_train_timesteps: number of training timesteps T.
        beta_start: first beta of the linear schedule.
        beta_end: last beta of the linear schedule.

    Returns:
        (T,) float64 tensor ᾱ_0 > ᾱ_1 > ... > ᾱ_{T-1} > 0.
    """
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    T = num_train_timesteps
    if kind == "squaredcos_cap_v2":
        # β_t = min(1 - f((t+1)/T) / f(t/T), 0.999) with f(s) = cos²((s + 0.008)/1.008 · π/2)
        s = torch.arange(T + 1, dtype=torch.float64) / T  # (T+1,)
        f = torch.cos((s + 0.008) / 1.008 * (math.pi / 2)) ** 2  # (T+1,)
        betas = (1.0 - f[1:] / f[:-1]).clamp(max=_MAX_BETA)  # (T,)
    elif kind == "linear":
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)  # (T,)
    else:
        raise ValueError(f"unknown beta schedule {kind!r}")
    return torch.cumprod(1.0 - betas, dim=0)  # (T,)


def make_timesteps(
    num_train_timesteps: int,
    num_inference_steps: int,
    spacing: TimestepSpacing = "leading",
    steps_offset: int = 0,
) -> Tensor:
    """Inference timesteps τ_0 > τ_1 > ... > τ_{K-1}, with diffusers' DDPM/DDIM spacing conventions.

    - "leading": τ = (K-1-i) · (T // K) + steps_offset (100/100 -> 99..0; 100/10 -> 90, 80, ..., 0).
    - "trailing": τ = round(T - i · T/K) - 1 (100/10 -> 99, 89, ..., 9).
    - "linspace": τ = round(linspace(0, T-1, K)) in decreasing order.

    Args:
        num_train_timesteps: T.
        num_inference_steps: K, with 1 <= K <= T.
        spacing: one of "leading", "trailing", "linspace".
        steps_offset: added to every "leading" timestep (diffusers' `steps_offset`); must be 0 for the
            other spacings.

    Returns:
        (K,) int64 tensor, strictly decreasing, values in [0, T-1].
    """
    T, K = num_train_timesteps, num_inference_steps
    if not 1 <= K <= T:
        raise ValueError(f"need 1 <= num_inference_steps <= num_train_timesteps, got {K} and {T}")
    if spacing == "leading":
        ts = np.arange(K - 1, -1, -1, dtype=np.int64) * (T // K) + steps_offset
    elif spacing == "trailing":
        ts = np.round(T - np.arange(K) * (T / K)).astype(np.int64) - 1  # == diffusers' arange(T, 0, -T/K)
    elif spacing == "linspace":
        ts = np.linspace(0, T - 1, K).round()[::-1].astype(np.int64)
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}")
    if steps_offset != 0 and spacing != "leading":
        raise ValueError("steps_offset is only defined for 'leading' spacing")
    if ts.shape != (K,) or ts.min() < 0 or ts.max() > T - 1 or np.any(np.diff(ts) >= 0):
        raise ValueError(
            f"spacing {spacing!r} with offset {steps_offset} gives invalid timesteps {ts.tolist()}"
        )
    return torch.from_numpy(ts.copy())


@dataclass(frozen=True)
class StepRows:
    """The per-step coefficients of a batch of rows, gathered from a `StepTable` in one indexing op.

    `diffusion_step.step` accepts it in place of a LongTensor of step positions: row r then reads its
    coefficients from `values[r]` instead of gathering every column separately (the Picard sampler
    evaluates many rows per iteration, and one gather is cheaper than a dozen).

    Attributes:
        positions: (R,) int64 step position of each row (or any leading shape, e.g. (M, A)).
        values: (R, len(STEP_COLUMNS)) coefficients (the same leading shape), column c = `STEP_COLUMNS[c]`.
    """

    positions: Tensor
    values: Tensor

    def column(self, name: str) -> Tensor:
        """Coefficient ``name`` (one of `STEP_COLUMNS`) of every row, shaped like `positions` (a view)."""
        return self.values[..., _COLUMN_INDEX[name]]


@dataclass(frozen=True)
class StepTable:
    """Per-inference-step coefficients of one sampler, built once by `make_step_table`.

    Every tensor below is indexed by the step position i in 0..K-1 (step i leaves buffer slot i, at
    timestep τ_i, and lands in slot i+1). Coefficients are computed in float64 and stored in the working
    dtype; `tol_variance` is kept in at least float32 so that tiny variances do not underflow.

    Attributes:
        kind: sampler whose update rule `diffusion_step.step` applies ("ddpm", "ddim", "dpmsolver++").
        prediction_type: what the denoiser predicts ("epsilon", "sample", "v_prediction").
        clip_sample: clamp x̂₀ to [-clip_sample_range, clip_sample_range] (all kinds).
        clip_sample_range: clipping bound.
        num_train_timesteps: T.
        timestep_values: host copy of the timesteps (τ_0, ..., τ_{K-1}); never needs a device sync.
        orders: host copy of the DPM-Solver++ order per step (1 or 2; all 1 for other kinds).
        alphas_cumprod: (T,) training schedule ᾱ_t (for `add_noise` during training).
        timesteps: (K,) int64 τ_i, fed to the denoiser.
        alpha_bar: (K,) ᾱ(τ_i).
        alpha_bar_prev: (K,) ᾱ(τ_{i+1}); after the last step 1.0 (DDPM, or `set_alpha_to_one`) or ᾱ_0.
        sqrt_alpha_bar: (K,) √ᾱ.
        sqrt_one_minus_alpha_bar: (K,) √(1-ᾱ).
        sqrt_recip_alpha_bar: (K,) 1/√ᾱ.
        sqrt_recipm1_alpha_bar: (K,) √(1/ᾱ - 1).
        posterior_coef_x0: (K,) √ᾱ'·β_s/(1-ᾱ), the x̂₀ weight of the DDPM posterior mean.
        posterior_coef_xt: (K,) √α_s·(1-ᾱ')/(1-ᾱ), the x_t weight of the DDPM posterior mean.
        posterior_variance: (K,) β̃ = β_s·(1-ᾱ')/(1-ᾱ) (exactly 0 when ᾱ' = 1).
        sigma: (K,) std of the noise added by step i: √β̃ for DDPM ("fixed_small"), 0 at the last step
            and 0 everywhere for the deterministic kinds.
        sqrt_alpha_bar_prev: (K,) √ᾱ' (DDIM).
        sqrt_one_minus_alpha_bar_prev: (K,) √(1-ᾱ') (DDIM, η = 0).
        lambda_: (K,) half log-SNR λ = log √ᾱ - log √(1-ᾱ) at τ_i.
        lambda_prev: (K,) λ at the landing level (+inf when ᾱ' = 1).
        dpm_coef_x: (K,) σ'/σ, the x_t weight of DPM-Solver++.
        dpm_coef_x0: (K,) weight of x̂₀(τ_i) in DPM-Solver++.
        dpm_coef_x0_prev: (K,) weight of the previous step's x̂₀(τ_{i-1}); 0 for first-order steps.
        rollout_coef_x: (K,) with x̂₀ held fixed, step i is affine in x_t: x' = a·x_t + b·x̂₀ + σ·z; this
            is a (derived from `diffusion_step.step` itself when the table is built).
        rollout_coef_x0: (K,) b of the same affine map (for DPM-Solver++ the history x̂₀ is the same x̂₀).
        tol_variance: (K,) variance that normalises the Picard change of slot i (see `make_step_table`).
        coefficients: (K, len(STEP_COLUMNS)) every per-step coefficient column stacked (built from the
            fields above; `rows` gathers from it).
    """

    kind: SamplerKind
    prediction_type: PredictionType
    clip_sample: bool
    clip_sample_range: float
    num_train_timesteps: int
    timestep_values: tuple[int, ...]
    orders: tuple[int, ...]
    alphas_cumprod: Tensor
    timesteps: Tensor
    alpha_bar: Tensor
    alpha_bar_prev: Tensor
    sqrt_alpha_bar: Tensor
    sqrt_one_minus_alpha_bar: Tensor
    sqrt_recip_alpha_bar: Tensor
    sqrt_recipm1_alpha_bar: Tensor
    posterior_coef_x0: Tensor
    posterior_coef_xt: Tensor
    posterior_variance: Tensor
    sigma: Tensor
    sqrt_alpha_bar_prev: Tensor
    sqrt_one_minus_alpha_bar_prev: Tensor
    lambda_: Tensor
    lambda_prev: Tensor
    dpm_coef_x: Tensor
    dpm_coef_x0: Tensor
    dpm_coef_x0_prev: Tensor
    rollout_coef_x: Tensor
    rollout_coef_x0: Tensor
    tol_variance: Tensor
    coefficients: Tensor = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        stacked = torch.stack([getattr(self, name) for name in STEP_COLUMNS], dim=1)  # (K, n_columns)
        object.__setattr__(self, "coefficients", stacked)

    def rows(self, positions: Tensor) -> StepRows:
        """Gather the coefficients of the steps at ``positions`` ((R,) int64) in one indexing op."""
        return StepRows(positions, self.coefficients.index_select(0, positions))

    @property
    def num_steps(self) -> int:
        """Number of inference steps K."""
        return len(self.timestep_values)

    @property
    def device(self) -> torch.device:
        """Device holding the coefficient tensors."""
        return self.timesteps.device

    @property
    def dtype(self) -> torch.dtype:
        """Working dtype of the coefficients."""
        return self.alpha_bar.dtype

    @property
    def is_stochastic(self) -> bool:
        """True when steps add pre-drawn noise (DDPM)."""
        return self.kind == "ddpm"

    @property
    def uses_history(self) -> bool:
        """True when step i also needs the x̂₀ prediction of step i-1 (DPM-Solver++(2M))."""
        return self.kind == "dpmsolver++"

    def to(self, device: torch.device | str) -> StepTable:
        """Return a copy with every tensor moved to `device` (host-side fields are shared)."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if f.init and isinstance(getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **moved)


def make_step_table(
    alphas_cumprod: Tensor,
    timesteps: Tensor | Sequence[int],
    *,
    kind: SamplerKind = "ddpm",
    prediction_type: PredictionType = "epsilon",
    clip_sample: bool = True,
    clip_sample_range: float = 1.0,
    set_alpha_to_one: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> StepTable:
    """Build the coefficient table of a sampler from the actual list of inference timesteps.

    The landing level of step i is taken from the *next element* of `timesteps` (not from a uniform
    stride), so any spacing works. After the last step it is 1.0 for DDPM; for DDIM and DPM-Solver++
    `set_alpha_to_one` chooses 1.0 (clean data, DiffusionPolicy's setting) or ᾱ_0.

    Per kind:
      - "ddpm": posterior mean and `fixed_small` std σ_i = √β̃_i (DDPM eqs. 6-7); no noise at the last
        step (β̃ = 0 there since ᾱ' = 1).
      - "ddim": η = 0 only (deterministic); σ_i = 0.
      - "dpmsolver++": DPM-Solver++(2M) data-prediction multistep (Lu et al. 2022, Alg. 2). Step 0 is
        first order (no history). The last step is first order when it lands on ᾱ' = 1 (λ' = ∞) or when
        K < 15 (diffusers' `lower_order_final`). Every other step is second order and uses the x̂₀ of
        the previous step. σ_i = 0.

    Picard tolerance variance (`tol_variance[i]`, the variance that normalises the change of buffer
    slot i, which is the input of step i): the DDPM posterior variance β̃_i of the step leaving slot i,
    as in ParaDiGMS; the deterministic kinds use the same DDPM-equivalent (η = 1) variance although they
    add no noise. Where that variance is 0 (the final step when ᾱ' = 1), the last positive variance of an
    earlier step is used instead (the variance of the noise that produced the slot, for the last slot);
    if none exists, 1e-20 (the reference's clamp).

    Args:
        alphas_cumprod: (T,) ᾱ_t, e.g. from `make_alphas_cumprod`.
        timesteps: (K,) strictly decreasing inference timesteps, e.g. from `make_timesteps`.
        kind: "ddpm", "ddim" or "dpmsolver++".
        prediction_type: "epsilon", "sample" or "v_prediction".
        clip_sample: clamp x̂₀ to ±`clip_sample_range`.
        clip_sample_range: clipping bound (> 0).
        set_alpha_to_one: DDIM/DPM-Solver++ only: land the last step on ᾱ' = 1 (True) or ᾱ_0 (False).
        dtype: working dtype of the coefficients.
        device: device of the tensors (default: CPU).

    Returns:
        The frozen `StepTable`.
    """
    if kind not in ("ddpm", "ddim", "dpmsolver++"):
        raise ValueError(f"unknown sampler kind {kind!r}")
    if prediction_type not in ("epsilon", "sample", "v_prediction"):
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
    if clip_sample and not clip_sample_range > 0:
        raise ValueError(f"clip_sample_range must be > 0, got {clip_sample_range}")
    ac = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)  # (T,)
    T = ac.shape[0]
    if ac.dim() != 1 or T < 1 or not bool(((ac > 0) & (ac < 1)).all()):
        raise ValueError("alphas_cumprod must be a 1-D tensor with values in (0, 1)")
    ts = torch.as_tensor(timesteps).detach().to("cpu", torch.int64).reshape(-1)  # (K,)
    K = ts.shape[0]
    if K < 1 or int(ts.min()) < 0 or int(ts.max()) > T - 1 or bool((ts[1:] >= ts[:-1]).any()):
        raise ValueError(f"timesteps must be strictly decreasing in [0, {T - 1}], got {ts.tolist()}")

    # 1. Noise levels of each step: ᾱ at τ_i and at the landing timestep τ_{i+1}.
    final = 1.0 if (kind == "ddpm" or set_alpha_to_one) else float(ac[0])
    a = ac[ts]  # (K,) ᾱ
    a_prev = torch.cat([ac[ts[1:]], torch.tensor([final], dtype=torch.float64)])  # (K,) ᾱ'
    alpha_s = a / a_prev  # (K,) α_s
    beta_s = 1.0 - alpha_s  # (K,) β_s

    # 2. DDPM posterior q(x_{t'} | x_t, x_0) (Ho et al. 2020, eqs. 6-7):
    #    μ = √ᾱ'·β_s/(1-ᾱ) · x_0 + √α_s·(1-ᾱ')/(1-ᾱ) · x_t,   β̃ = β_s·(1-ᾱ')/(1-ᾱ).
    coef_x0 = a_prev.sqrt() * beta_s / (1.0 - a)
    coef_xt = alpha_s.sqrt() * (1.0 - a_prev) / (1.0 - a)
    post_var = (beta_s * (1.0 - a_prev) / (1.0 - a)).clamp(min=0.0)
    if kind == "ddpm":
        sigma = post_var.sqrt()
        sigma[-1] = 0.0  # no noise after the last step (β̃ = 0 there already; made explicit)
    else:
        sigma = torch.zeros(K, dtype=torch.float64)

    # 3. DPM-Solver++ (Lu et al. 2022): α = √ᾱ, σ = √(1-ᾱ), λ = log α - log σ, h_i = λ' - λ.
    #    2M (Alg. 2): x' = (σ'/σ)·x + α'(1-e^{-h})·[(1 + 1/(2r))·x̂₀(τ_i) - 1/(2r)·x̂₀(τ_{i-1})],
    #    r = h_{i-1}/h_i; first order drops the bracket's second term and the 1/(2r).
    alpha, sig = a.sqrt(), (1.0 - a).sqrt()
    alpha_p, sig_p = a_prev.sqrt(), (1.0 - a_prev).sqrt()
    lam = alpha.log() - sig.log()  # (K,)
    lam_p = torch.where(sig_p > 0, alpha_p.log() - sig_p.log(), torch.full_like(sig_p, math.inf))  # (K,)
    h = lam_p - lam  # (K,) > 0; +inf where ᾱ' = 1
    one_minus_exp = -torch.expm1(-h)  # (K,) 1 - e^{-h}, exactly 1 where h = inf
    dpm_x = sig_p / sig
    dpm_x0 = alpha_p * one_minus_exp
    dpm_x0_prev = torch.zeros(K, dtype=torch.float64)
    orders = [1] * K
    if kind == "dpmsolver++":
        last_first_order = final == 1.0 or K < _DPM_LOWER_ORDER_FINAL_BELOW
        for i in range(1, K - 1 if last_first_order else K):
            orders[i] = 2
            half_inv_r = 0.5 * float(h[i] / h[i - 1])  # 1/(2r), r = h_{i-1}/h_i
            dpm_x0[i] = alpha_p[i] * one_minus_exp[i] * (1.0 + half_inv_r)
            dpm_x0_prev[i] = -alpha_p[i] * one_minus_exp[i] * half_inv_r

    # 4. Picard tolerance variance of slot i (the input of step i): β̃_i, else the last positive earlier one.
    tol_var = post_var.clone()
    last_positive = _MIN_TOL_VARIANCE
    for i in range(K):
        if tol_var[i] > 0:
            last_positive = float(tol_var[i])
        else:
            tol_var[i] = last_positive
    tol_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def build(
        cast: Callable[[Tensor], Tensor],
        rollout_x: Tensor,
        rollout_x0: Tensor,
        dev: torch.device | str | None,
    ) -> StepTable:
        return StepTable(
            kind=kind,
            prediction_type=prediction_type,
            clip_sample=clip_sample,
            clip_sample_range=float(clip_sample_range),
            num_train_timesteps=T,
            timestep_values=tuple(int(v) for v in ts.tolist()),
            orders=tuple(orders),
            alphas_cumprod=cast(ac),
            timesteps=ts.to(dev),
            alpha_bar=cast(a),
            alpha_bar_prev=cast(a_prev),
            sqrt_alpha_bar=cast(alpha),
            sqrt_one_minus_alpha_bar=cast(sig),
            sqrt_recip_alpha_bar=cast(1.0 / alpha),
            sqrt_recipm1_alpha_bar=cast((1.0 / a - 1.0).sqrt()),
            posterior_coef_x0=cast(coef_x0),
            posterior_coef_xt=cast(coef_xt),
            posterior_variance=cast(post_var),
            sigma=cast(sigma),
            sqrt_alpha_bar_prev=cast(alpha_p),
            sqrt_one_minus_alpha_bar_prev=cast(sig_p),
            lambda_=cast(lam),
            lambda_prev=cast(lam_p),
            dpm_coef_x=cast(dpm_x),
            dpm_coef_x0=cast(dpm_x0),
            dpm_coef_x0_prev=cast(dpm_x0_prev),
            rollout_coef_x=cast(rollout_x),
            rollout_coef_x0=cast(rollout_x0),
            tol_variance=tol_var.to(device=dev, dtype=tol_dtype),
        )

    # 5. The held-x̂₀ affine map of each step, read off the shared step function on a float64 CPU copy
    #    (so that no second copy of the update rules exists).
    from parapolicy.policy.diffusion.step import held_x0_coefficients  # noqa: PLC0415 (diffusion_step imports this module)

    zeros = torch.zeros(K, dtype=torch.float64)
    rollout_x, rollout_x0 = held_x0_coefficients(build(lambda v: v, zeros, zeros, "cpu"))
    return build(lambda v: v.to(device=device, dtype=dtype), rollout_x, rollout_x0, device)
