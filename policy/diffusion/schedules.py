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

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from parapolicy.policy.diffusion.options import BETA_SCHEDULES, PREDICTION_TYPES, TIMESTEP_SPACINGS
from parapolicy.policy.diffusion.rules import Levels, get_rule
from parapolicy.policy.diffusion.step import held_x0_coefficients
from parapolicy.policy.diffusion.step_table import SHARED_COLUMNS, StepRows, StepTable

__all__ = [
    "StepRows",
    "StepTable",
    "make_alphas_cumprod",
    "make_step_table",
    "make_timesteps",
]

_MAX_BETA = 0.999  # squaredcos_cap_v2 caps every beta here (Nichol & Dhariwal 2021, eq. 17)
_MIN_TOL_VARIANCE = 1e-20  # ParaDiGMS' clamp; used only when no positive variance exists


def make_alphas_cumprod(
    kind: str,
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
        raise ValueError(f"beta schedule must be one of {BETA_SCHEDULES}, got {kind!r}")
    return torch.cumprod(1.0 - betas, dim=0)  # (T,)


def make_timesteps(
    num_train_timesteps: int,
    num_inference_steps: int,
    spacing: str = "leading",
    steps_offset: int = 0,
) -> Tensor:
    """Inference timesteps τ_0 > τ_1 > ... > τ_{K-1}, with diffusers' spacing conventions.

    The names shared with diffusers mean what its DDPMScheduler and DDIMScheduler mean, for every
    update rule (the golden outputs pin them):

    - "leading": τ = (K-1-i) · (T // K) + steps_offset (100/100 -> 99..0; 100/10 -> 90, 80, ..., 0).
    - "trailing": τ = round(T - i · T/K) - 1 (100/10 -> 99, 89, ..., 9); also DPMSolverMultistep's.
    - "linspace": τ = round(linspace(0, T-1, K)) in decreasing order.

    diffusers' DPMSolverMultistepScheduler gives "leading" and "linspace" another grid (K + 1 points,
    the last, t = 0, dropped: its final step goes from the smallest τ straight to clean data). Those
    grids have their own names here:

    - "dpm_leading": τ = (K-i) · (T // (K+1)) + steps_offset (100/10 -> 90, 81, ..., 9).
    - "dpm_linspace": τ = round(linspace(0, T-1, K+1)) in decreasing order, without the last (0).

    Args:
        num_train_timesteps: T.
        num_inference_steps: K, with 1 <= K <= T.
        spacing: one of `TIMESTEP_SPACINGS` ("leading", "trailing", "linspace", "dpm_leading",
            "dpm_linspace").
        steps_offset: added to every "leading" / "dpm_leading" timestep (diffusers' `steps_offset`);
            must be 0 for the other spacings.

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
    elif spacing == "dpm_leading":
        ts = np.arange(K, 0, -1, dtype=np.int64) * (T // (K + 1)) + steps_offset
    elif spacing == "dpm_linspace":
        ts = np.linspace(0, T - 1, K + 1).round()[::-1][:-1].astype(np.int64)
    else:
        raise ValueError(f"timestep spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")
    if steps_offset != 0 and spacing not in ("leading", "dpm_leading"):
        raise ValueError("steps_offset is only defined for 'leading' and 'dpm_leading' spacing")
    if ts.shape != (K,) or ts.min() < 0 or ts.max() > T - 1 or np.any(np.diff(ts) >= 0):
        raise ValueError(
            f"spacing {spacing!r} with offset {steps_offset} gives invalid timesteps {ts.tolist()}"
        )
    return torch.from_numpy(ts.copy())


def make_step_table(
    alphas_cumprod: Tensor,
    timesteps: Tensor | Sequence[int],
    *,
    kind: str = "ddpm",
    prediction_type: str = "epsilon",
    clip_sample: bool = True,
    clip_sample_range: float = 1.0,
    set_alpha_to_one: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> StepTable:
    """Build the coefficient table of a sampler from the actual list of inference timesteps.

    The landing level of step i is taken from the *next element* of `timesteps` (not from a uniform
    stride), so any spacing works. After the last step it is 1.0 for DDPM (any rule with
    `always_lands_on_clean`); for the others `set_alpha_to_one` chooses 1.0 (clean data,
    DiffusionPolicy's setting) or ᾱ_0. The rule named `kind` (see `rules/`) adds its own columns: DDPM
    its posterior mean and `fixed_small` std, DDIM (η = 0) its landing level, DPM-Solver++(2M) its
    first/second-order weights.

    Picard tolerance variance (`tol_variance[i]`, the variance that normalises the change of buffer
    slot i, which is the input of step i): the DDPM posterior variance β̃_i of the step leaving slot i,
    as in ParaDiGMS; the deterministic rules use the same DDPM-equivalent (η = 1) variance although they
    add no noise. Where that variance is 0 (the final step when ᾱ' = 1), the last positive variance of an
    earlier step is used instead (the variance of the noise that produced the slot, for the last slot);
    if none exists, 1e-20 (the reference's clamp).

    Args:
        alphas_cumprod: (T,) ᾱ_t, e.g. from `make_alphas_cumprod`.
        timesteps: (K,) strictly decreasing inference timesteps, e.g. from `make_timesteps`.
        kind: a registered update rule (`rules.RULES`): "ddpm", "ddim", "dpmsolver++", ...
        prediction_type: "epsilon", "sample" or "v_prediction".
        clip_sample: clamp x̂₀ to ±`clip_sample_range`.
        clip_sample_range: clipping bound (> 0).
        set_alpha_to_one: land the last step on ᾱ' = 1 (True) or ᾱ_0 (False); DDPM always lands on 1.
        dtype: working dtype of the coefficients.
        device: device of the tensors (default: CPU).

    Returns:
        The frozen `StepTable`.
    """
    rule = get_rule(kind)
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
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
    final = 1.0 if (rule.always_lands_on_clean or set_alpha_to_one) else float(ac[0])
    a = ac[ts]  # (K,) ᾱ
    a_prev = torch.cat([ac[ts[1:]], torch.tensor([final], dtype=torch.float64)])  # (K,) ᾱ'
    beta_s = 1.0 - a / a_prev  # (K,) β_s = 1 - α_s

    # 2. DDPM posterior variance β̃ = β_s·(1-ᾱ')/(1-ᾱ) (Ho et al. 2020, eq. 7): Picard's tolerance scale.
    post_var = (beta_s * (1.0 - a_prev) / (1.0 - a)).clamp(min=0.0)
    levels = Levels(alpha_bar=a, alpha_bar_prev=a_prev, posterior_variance=post_var)

    # 3. The rule's own columns (and orders, for multistep rules).
    own = rule.coefficients(levels)
    if set(own.columns) != set(rule.columns):
        raise ValueError(f"rule {kind!r} returned columns {sorted(own.columns)}, declared {rule.columns}")
    orders = own.orders if own.orders is not None else (1,) * K
    shared = {
        "alpha_bar": a,
        "alpha_bar_prev": a_prev,
        "sqrt_alpha_bar": a.sqrt(),
        "sqrt_one_minus_alpha_bar": (1.0 - a).sqrt(),
        "sqrt_recip_alpha_bar": 1.0 / a.sqrt(),
        "sqrt_recipm1_alpha_bar": (1.0 / a - 1.0).sqrt(),
        "posterior_variance": post_var,
        "sigma": torch.zeros(K, dtype=torch.float64),
    }
    names = SHARED_COLUMNS + tuple(c for c in rule.columns if c not in SHARED_COLUMNS)
    values = {**shared, **own.columns}

    # 4. Picard tolerance variance of slot i (the input of step i): β̃_i, else the last positive earlier one.
    tol_var = post_var.clone()
    last_positive = _MIN_TOL_VARIANCE
    for i in range(K):
        if tol_var[i] > 0:
            last_positive = float(tol_var[i])
        else:
            tol_var[i] = last_positive
    tol_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def build(coefficients: Tensor, dev: torch.device | str | None, dt: torch.dtype) -> StepTable:
        return StepTable(
            rule=rule,
            prediction_type=prediction_type,
            clip_sample=clip_sample,
            clip_sample_range=float(clip_sample_range),
            num_train_timesteps=T,
            timestep_values=tuple(int(v) for v in ts.tolist()),
            orders=tuple(orders),
            alphas_cumprod=ac.to(device=dev, dtype=dt),
            timesteps=ts.to(dev),
            tol_variance=tol_var.to(device=dev, dtype=tol_dtype),
            column_names=names,
            coefficients=coefficients.to(device=dev, dtype=dt),
        )

    # 5. The held-x̂₀ affine map of each step, read off the shared step function on a float64 CPU copy
    #    (so that no second copy of the update rules exists).
    def stacked() -> Tensor:
        return torch.stack([values[n] for n in names], dim=1)  # (K, n_columns) float64

    zeros = torch.zeros(K, dtype=torch.float64)
    values["rollout_coef_x"], values["rollout_coef_x0"] = zeros, zeros
    values["rollout_coef_x"], values["rollout_coef_x0"] = held_x0_coefficients(
        build(stacked(), "cpu", torch.float64)
    )
    return build(stacked(), device, dtype)
