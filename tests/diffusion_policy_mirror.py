"""Test-only pieces shared by `tests/test_diffusion_policy_image.py` and the generator of its golden
values (`tests/artifacts/make_diffusion_policy_image_golden.py`): the deterministic weights of a
Diffusion Policy hybrid image policy's state dict, given its tensor names and shapes.

The generator records the names, shapes and aliases of the state dict that Diffusion Policy's
``DiffusionUnetHybridImagePolicy`` really has (robomimic's encoder registers its backbone and pool twice,
so two names hold one tensor), the fixed tensors (spatial-softmax grid and temperature, normaliser
parameters), and what robomimic's encoder and Diffusion Policy's ``predict_action`` compute from those
weights. The test rebuilds the same state dict from the same seed, writes it as a ``.ckpt`` and checks
that this project's loader reproduces those values.
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
