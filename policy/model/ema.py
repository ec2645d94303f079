"""Exponential moving average of network weights with diffusion_policy's warm-up schedule (no hydra)."""

from __future__ import annotations

import torch
from torch import nn


def ema_decay(
    optimization_step: int, power: float = 0.75, inv_gamma: float = 1.0, max_decay: float = 0.9999
) -> float:
    """The reference EMA decay before update number ``optimization_step`` (0-based).

    decay = clamp(1 - (1 + s / inv_gamma) ** -power, 0, max_decay) with s = max(0, step - 1); the first
    two updates copy the weights (decay 0). About 0.994 at 1k steps, 0.999 at 10k, 0.9999 at ~215k.
    """
    s = max(0, optimization_step - 1)
    if s <= 0:
        return 0.0
    return max(0.0, min(1.0 - (1.0 + s / inv_gamma) ** -power, max_decay))


class EMA:
    """Keeps ``shadow`` (a module of the same architecture) as the EMA of ``model``'s parameters.

    Buffers (normaliser statistics), frozen parameters and BatchNorm layers' parameters are copied, not
    averaged (Diffusion Policy's EMAModel; the running statistics, buffers, are copied too).
    """

    def __init__(
        self, shadow: nn.Module, power: float = 0.75, inv_gamma: float = 1.0, max_decay: float = 0.9999
    ):
        if not (power > 0.0 and inv_gamma > 0.0 and 0.0 <= max_decay < 1.0):
            raise ValueError(
                f"invalid EMA settings power={power}, inv_gamma={inv_gamma}, max_decay={max_decay}"
            )
        self.shadow = shadow
        self.power, self.inv_gamma, self.max_decay = power, inv_gamma, max_decay
        self.optimization_step = 0
        self.shadow.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Blend ``model`` into the shadow; returns the decay used."""
        decay = ema_decay(self.optimization_step, self.power, self.inv_gamma, self.max_decay)
        shadow_params = dict(self.shadow.named_parameters())
        copied = _batch_norm_parameters(model)  # copied, not averaged, as Diffusion Policy's EMAModel
        for name, param in model.named_parameters():
            target = shadow_params[name]
            if param.requires_grad and name not in copied:
                target.mul_(decay).add_(param.detach(), alpha=1.0 - decay)
            else:
                target.copy_(param.detach())
        shadow_buffers = dict(self.shadow.named_buffers())
        for name, buf in model.named_buffers():
            shadow_buffers[name].copy_(buf)
        self.optimization_step += 1
        return decay


def _batch_norm_parameters(model: nn.Module) -> set[str]:
    """Names of the parameters of ``model``'s BatchNorm layers (image encoders with ``norm=batch_norm``)."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for name, _ in module.named_parameters(recurse=False)
    }
