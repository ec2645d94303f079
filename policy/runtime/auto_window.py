"""`window=auto`: pick the Picard window that minimises the expected latency on this device (no hydra).

Two measurements, both cheap:

1. The denoiser's cost against batch rows (`denoiser_cost_curve`): median wall time of one call at
   each batch size, on the policy's device, after warm-up. It depends only on the network, the device,
   the thread count and how the network runs (`DiffusionPolicy.compiled_as`), so it is cached on disk
   (``$PARAPOLICY_CACHE_DIR`` or ``~/.cache/parapolicy/denoiser_cost.json``) under a key naming them
   all; it is measured once.
2. The rows each Picard call evaluates for a candidate window (`SampleResult.rows_per_call`), from
   one real sampling run on calibration observations. This does not depend on the device.

The expected latency of a window is the sum over its calls of the interpolated cost of that call's
rows; the window with the smallest expected latency wins.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from parapolicy.policy.atomic_write import write_text_atomically
from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.diffusion.coarse import x0_jacobian
from parapolicy.policy.diffusion.dispatch import run_sampler
from parapolicy.policy.diffusion.sequential import draw_noise
from parapolicy.policy.model.image_observation import batch_size
from parapolicy.policy.model.policy import OBS_KEY, DiffusionPolicy
from parapolicy.policy.runtime.gc_freeze import frozen_heap
from parapolicy.policy.runtime.timing import TimedDenoiser

log = logging.getLogger(__name__)

DEFAULT_CANDIDATES = (2, 4, 8, 12, 16, 24, 32)
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)


def cache_path() -> Path:
    """Where measured cost curves are cached."""
    root = os.environ.get("PARAPOLICY_CACHE_DIR") or Path.home() / ".cache" / "parapolicy"
    return Path(root) / "denoiser_cost.json"


def device_facts(device: torch.device | str) -> dict[str, Any]:
    """What a denoiser's cost depends on besides the network: the device, torch and the thread count."""
    dev = torch.device(device)
    return {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or "cpu",
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def _cache_key(policy: DiffusionPolicy) -> str:
    info = device_facts(policy.device)
    net = json.dumps(dataclasses.asdict(policy.config.unet), sort_keys=True)
    shape = (policy.config.horizon, policy.config.action_dim, policy.config.global_cond_dim)
    facts = (
        *(info[k] for k in ("device_name", "device", "torch_version", "torch_threads")),
        net,
        shape,
        policy.compiled_as,  # eager, one trace and the CPU graphs cost different things per call
    )
    raw = "|".join(str(f) for f in facts)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


@torch.no_grad()
def measure_denoiser_ms(policy: DiffusionPolicy, rows: int, repeats: int = 7, warmup: int = 2) -> float:
    """Median milliseconds of one ``policy.denoise`` call on ``rows`` rows."""
    cfg, device = policy.config, policy.device
    x = torch.randn(rows, cfg.horizon, cfg.action_dim, device=device)  # (N, H, Da)
    t = torch.full((rows,), cfg.schedule.num_train_timesteps // 2, dtype=torch.long, device=device)  # (N,)
    cond = torch.randn(rows, cfg.global_cond_dim, device=device)  # (N, C)
    timer = TimedDenoiser(policy.denoise, device)
    for _ in range(warmup + repeats):
        timer(x, t, cond)
    return 1e3 * statistics.median(timer.call_seconds[warmup:])


def _valid_costs(entry: Any, batch_sizes: tuple[int, ...]) -> dict[int, float] | None:
    """The cached curve for ``batch_sizes`` if every value is a finite positive number, else None."""
    cached = entry.get("ms_per_call") if isinstance(entry, dict) else None
    if not isinstance(cached, dict):
        return None
    curve = {}
    for b in batch_sizes:
        value = cached.get(str(b))
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            return None
        curve[b] = float(value)
    return curve


def denoiser_cost_curve(
    policy: DiffusionPolicy,
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES,
    repeats: int = 7,
    use_cache: bool = True,
) -> dict[int, float]:
    """Milliseconds per denoiser call against batch rows, measured once per device and cached."""
    path, key = cache_path(), _cache_key(policy)
    cache: dict[str, Any] = {}
    if use_cache and path.is_file():
        try:
            cache = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            cache = {}  # a corrupt cache is re-measured, never trusted
        if not isinstance(cache, dict):
            cache = {}
        cached = _valid_costs(cache.get(key), batch_sizes)
        if cached is not None:
            return cached
        if key in cache:
            log.warning(
                "%s: invalid cost entry for this device (non-finite or non-positive): re-measuring", path
            )
            cache.pop(key)
    was_training = policy.training
    policy.eval()
    try:
        with frozen_heap():  # no full garbage collection inside a timed call
            curve = {b: measure_denoiser_ms(policy, b, repeats) for b in batch_sizes}
    finally:
        policy.train(was_training)
    if use_cache:
        entry = cache.setdefault(key, {"run": device_facts(policy.device), "ms_per_call": {}})
        entry["ms_per_call"].update({str(b): ms for b, ms in curve.items()})
        write_text_atomically(path, json.dumps(cache, indent=1))
    return curve


def interpolate_cost(curve: dict[int, float], rows: int) -> float:
    """Cost of a call on ``rows`` rows, linearly interpolated (extrapolated beyond the largest size)."""
    sizes = sorted(curve)
    if rows >= sizes[-1] and len(sizes) > 1:
        a, b = sizes[-2], sizes[-1]
        return curve[b] + (rows - b) * (curve[b] - curve[a]) / (b - a)
    return float(np.interp(rows, sizes, [curve[s] for s in sizes]))


def calibration_observations(policy: DiffusionPolicy, n: int = 4, seed: int = 0) -> Any:
    """``n`` observation histories drawn uniformly inside the normaliser's observed range (the
    preimage of [-1, 1] for a dimension without one).

    Low-dim policies: (n, To, Do). Image policies: ``{"pixels": (n, To, H, W, C) uint8 (uniform noise
    images), "agent_pos": (n, To, Do)}`` (the window choice only needs conditions the encoder makes).
    """
    cfg = policy.config
    stats = policy.normalizer.get_stats(OBS_KEY)
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 1, cfg.obs_dim, generator=gen)
    edges = torch.tensor([[-1.0], [1.0]], device=stats["min"].device).expand(2, cfg.obs_dim)  # (2, Do)
    ends = policy.normalizer.unnormalize(OBS_KEY, edges)  # (2, Do): where the normaliser gives -1, +1
    lo = torch.where(torch.isfinite(stats["min"]), stats["min"], ends[0])  # (Do,): an unbounded (IDENTITY)
    hi = torch.where(torch.isfinite(stats["max"]), stats["max"], ends[1])  # dimension: the [-1, 1] preimage
    obs = lo + u * (hi - lo)  # (n, 1, Do)
    obs = obs.expand(n, cfg.n_obs_steps, cfg.obs_dim).contiguous()  # (n, To, Do)
    if cfg.obs_type != "pixels_agent_pos":
        return obs
    C, H, W = cfg.vision.image_shape
    pixels = torch.randint(0, 256, (n, 1, H, W, C), generator=gen, dtype=torch.uint8)  # (n, 1, H, W, C)
    return {"pixels": pixels.expand(n, cfg.n_obs_steps, H, W, C).contiguous(), "agent_pos": obs}


def _select(obs: Any, i: int) -> Any:
    """Row ``i`` of a calibration batch (a tensor or a dict of tensors), keeping the batch axis."""
    if isinstance(obs, Mapping):
        return {k: v[i : i + 1] for k, v in obs.items()}
    return obs[i : i + 1]


def _calibration_inputs(policy: DiffusionPolicy, obs: Any, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """x_T (B, H, Da), the step noise (K, B, H, Da) and the condition (B, C) of a calibration batch."""
    x_obs = policy.validate_observation(obs if isinstance(obs, Mapping) else {OBS_KEY: obs}, history=True)
    cond = policy.condition(x_obs)  # (B, To*C): the encoder runs here for images
    shape = (batch_size(x_obs), policy.config.horizon, policy.config.action_dim)
    x_T, noise = draw_noise(policy.table, shape, torch.Generator().manual_seed(seed), device=policy.device)
    return x_T, noise, cond


@torch.no_grad()
def picard_rows_per_call(
    policy: DiffusionPolicy,
    sampler: SamplerConfig,
    obs: Any,
    seed: int = 0,
    coarse_jacobian: Tensor | None = None,
) -> tuple[int, ...]:
    """Rows of every denoiser call of one Picard solve for the batch ``obs`` (B, To, Do), or a dict of
    image histories (`calibration_observations`); ``coarse_jacobian``: the linear coarse model of
    ``sampler.coarse="linear"`` (`calibration_jacobian`)."""
    x_T, noise, cond = _calibration_inputs(policy, obs, seed)
    result = run_sampler(
        sampler, policy.denoise, x_T, policy.table, noise, cond, coarse_jacobian=coarse_jacobian
    )
    return result.rows_per_call


@torch.no_grad()
def calibration_jacobian(policy: DiffusionPolicy, sampler: SamplerConfig, obs: Any, seed: int = 0) -> Tensor:
    """The linear coarse model for the batch ``obs``, measured as a policy's first plan measures it: on
    the trajectory of one solve with ``sampler`` (`diffusion.coarse.x0_jacobian`)."""
    x_T, noise, cond = _calibration_inputs(policy, obs, seed)
    result = run_sampler(sampler, policy.denoise, x_T, policy.table, noise, cond)
    return x0_jacobian(policy.denoise, policy.table, result.trajectory, cond)


def choose_window(
    policy: DiffusionPolicy,
    sampler: SamplerConfig,
    obs: Any = None,
    candidates: tuple[int, ...] = DEFAULT_CANDIDATES,
    per_sample: bool = True,
) -> tuple[int, dict[str, Any]]:
    """The window with the smallest expected latency, and the report behind the choice.

    Args:
        policy: the policy (its current step table is used).
        sampler: the Picard settings (tolerance, cap); its ``window`` is ignored.
        obs: (B, To, Do) calibration observation histories (a dict for images); by default 4 drawn by
            `calibration_observations`.
        candidates: windows to consider (capped at K).
        per_sample: estimate the latency of planning one sample at a time (each calibration observation
            solved alone, latencies averaged), as a controller does; otherwise of the whole batch at once.
    """
    if obs is None:
        obs = calibration_observations(policy)
    K = policy.table.num_steps
    windows = sorted({min(int(w), K) for w in candidates if int(w) >= 1})
    batches = [_select(obs, i) for i in range(batch_size(obs))] if per_sample else [obs]
    jacobians: list[Tensor | None] = [None] * len(batches)
    if sampler.is_parallel and sampler.coarse == "linear":  # measured once per batch, as on a first plan
        widest = dataclasses.replace(sampler, window=windows[-1])
        jacobians = [calibration_jacobian(policy, widest, b) for b in batches]
    calls = {
        w: [
            picard_rows_per_call(policy, dataclasses.replace(sampler, window=w), b, coarse_jacobian=j)
            for b, j in zip(batches, jacobians, strict=True)
        ]
        for w in windows
    }
    largest = max(max(max(c) for c in cs) for cs in calls.values())
    sizes = tuple(sorted({1, 2, 4, *[s for s in DEFAULT_BATCH_SIZES if s <= largest], largest}))
    curve = denoiser_cost_curve(policy, sizes)
    expected = {
        w: float(np.mean([sum(interpolate_cost(curve, r) for r in c) for c in cs])) for w, cs in calls.items()
    }
    best = min(expected, key=expected.get)
    report = {
        "expected_ms": expected,
        "calls": {w: float(np.mean([len(c) for c in cs])) for w, cs in calls.items()},
        "cost_curve_ms": curve,
        "chosen": best,
    }
    return best, report


def resolve_sampler(
    policy: DiffusionPolicy, sampler: SamplerConfig
) -> tuple[SamplerConfig, dict[str, Any] | None]:
    """Replace ``window="auto"`` by the chosen window (other samplers are returned unchanged)."""
    if sampler.window != "auto":
        return sampler, None
    probe = dataclasses.replace(sampler, window=1)
    previous = policy.sampler
    policy.set_sampler(probe)  # the step table of this sampler kind
    try:
        window, report = choose_window(policy, probe)
    finally:
        policy.set_sampler(previous)
    return dataclasses.replace(sampler, window=window), report
