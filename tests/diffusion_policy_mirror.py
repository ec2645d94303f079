"""Test-only pieces shared by the Diffusion Policy checkpoint tests and the generators of their fixtures
(`tests/artifacts/make_diffusion_policy_*.py`): Diffusion Policy's DDPM settings and limits normaliser,
its DDIM sampling loop with diffusers' scheduler, and the deterministic weights of a hybrid image
policy's state dict given its tensor names and shapes.

For the image policy the generator records the names, shapes and aliases of the state dict that
Diffusion Policy's ``DiffusionUnetHybridImagePolicy`` really has (robomimic's encoder registers its
backbone and pool twice, so two names hold one tensor), the fixed tensors (spatial-softmax grid and
temperature, normaliser parameters), and what robomimic's encoder and Diffusion Policy's
``predict_action`` compute from those weights. The test rebuilds the same state dict from the same seed,
writes it as a ``.ckpt`` and checks that this project's loader reproduces those values.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def random_weights(entries: list[list], fixed: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
    """The policy state dict: ``fixed`` tensors as given, every other tensor drawn from ``seed``.

    Args:
        entries: [name, shape, alias] in state-dict order; ``alias`` names the earlier entry holding the
            same tensor (robomimic's shared modules), or is None.
        fixed: tensors that are not learned weights (grids, temperatures, normaliser parameters).
        seed: generator seed; tensors are drawn in entry order.

    Weights with two or more dimensions ~ N(0, 1 / fan_in); other ``weight`` tensors (norms) ~ 1 + 0.1 N;
    BatchNorm running variances ~ 1 + 0.1 |N|, its step counters 7 (int64); biases and running means
    ~ 0.1 N. Random values make a wrong mapping show.
    """
    g = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for name, shape, alias in entries:
        if alias is not None:
            state[name] = state[alias]
        elif name in fixed:
            state[name] = fixed[name]
        elif name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7)
        elif math.prod(shape) == 0:
            state[name] = torch.zeros(shape)
        else:
            w = torch.randn(shape, generator=g)
            if len(shape) >= 2:
                w = w / math.sqrt(math.prod(shape[1:]))
            elif name.endswith("weight"):
                w = 1.0 + 0.1 * w
            elif name.endswith("running_var"):
                w = 1.0 + 0.1 * w.abs()
            else:
                w = 0.1 * w
            state[name] = w
    return state


# Diffusion Policy's DDPM scheduler as its PushT workspaces configure it (diffusers' class, resolved).
DDPM_SCHEDULER = {
    "_target_": "diffusers.schedulers.scheduling_ddpm.DDPMScheduler",
    "num_train_timesteps": 100,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "squaredcos_cap_v2",
    "variance_type": "fixed_small",
    "clip_sample": True,
    "prediction_type": "epsilon",
}


def limits_normalizer(key: str, dim: int, lo: float, hi: float, g: torch.Generator) -> dict[str, Tensor]:
    """``normalizer.params_dict.<key>.*`` of Diffusion Policy's ``LinearNormalizer`` in "limits" mode
    (``x * scale + offset`` maps [min, max] to [-1, 1]) for per-dimension limits drawn near [lo, hi]."""
    low = lo + torch.rand(dim, generator=g) * 5  # (D,)
    high = hi - torch.rand(dim, generator=g) * 5  # (D,)
    scale = 2.0 / (high - low)
    p = f"normalizer.params_dict.{key}"
    return {
        f"{p}.scale": scale,
        f"{p}.offset": -1.0 - scale * low,
        f"{p}.input_stats.min": low,
        f"{p}.input_stats.max": high,
        f"{p}.input_stats.mean": (low + high) / 2,
        f"{p}.input_stats.std": (high - low) / 4,
    }


def ddim_sample(denoise, x_T: Tensor, scheduler: dict, steps: int) -> Tensor:
    """Diffusion Policy's ``conditional_sample`` loop (nothing inpainted) with diffusers' DDIM scheduler
    built from the checkpoint's DDPM settings; ``denoise(x, t)`` is the network with its condition."""
    import diffusers  # a dev dependency: only these tests and the generators need it

    ddim = diffusers.DDIMScheduler(
        num_train_timesteps=scheduler["num_train_timesteps"],
        beta_start=scheduler["beta_start"],
        beta_end=scheduler["beta_end"],
        beta_schedule=scheduler["beta_schedule"],
        clip_sample=scheduler["clip_sample"],
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type=scheduler["prediction_type"],
    )
    trajectory = x_T.clone()
    ddim.set_timesteps(steps)
    with torch.no_grad():
        for t in ddim.timesteps:
            trajectory = ddim.step(denoise(trajectory, t), t, trajectory).prev_sample
    return trajectory
