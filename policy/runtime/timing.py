"""`TimedDenoiser`: the one wrapper that times denoiser calls, installed with `DiffusionPolicy.set_denoiser`.

Every measurement of the network's share of a sample (the controller's latency sections, the sampler
benchmark, the GPU script) goes through this class, so all of them time the same thing the same way:
device-synchronised wall time of each call, with the number of calls and rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from parapolicy.policy.diffusion.sequential import sync_device

__all__ = ["TimedDenoiser", "timed_denoiser"]

DenoiseFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


class _RoutesDenoiser(Protocol):
    """What `timed_denoiser` needs of a policy (`DiffusionPolicy` has it)."""

    device: torch.device
    installed_denoiser: DenoiseFn | None

    def local_denoise(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor: ...

    def set_denoiser(self, denoiser: DenoiseFn | None) -> None: ...


class TimedDenoiser:
    """Wrap a denoiser and accumulate the device-synchronised time, calls and rows of every call.

    Args:
        inner: the denoiser to time ``(N, H, D), (N,), (N, C) -> (N, H, D)``.
        device: the device whose queued work is waited for before and after each call, so the time
            is the call's own (a no-op off CUDA).
    """

    def __init__(self, inner: DenoiseFn, device: torch.device | str) -> None:
        if not callable(inner):
            raise TypeError(f"inner denoiser must be callable, got {type(inner).__name__}")
        self.inner = inner
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        """Zero the counters."""
        self.seconds = 0.0
        self.calls = 0
        self.rows = 0

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """Evaluate ``inner`` on the flat batch and record its time; shapes as `Denoiser.__call__`."""
        sync_device(self.device)
        start = time.perf_counter()
        out = self.inner(x, t, cond)
        sync_device(self.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.rows += int(x.shape[0])
        return out


class timed_denoiser:  # noqa: N801  (used as a context manager, like `torch.no_grad`)
    """Install a `TimedDenoiser` around a policy's current denoiser for the duration of a block.

    ``with timed_denoiser(policy) as timer: ...`` routes ``policy.denoise`` through ``timer`` (via
    `set_denoiser`) and restores the previously installed denoiser on exit, even on error.
    """

    def __init__(self, policy: _RoutesDenoiser) -> None:
        self.policy = policy
        self._previous = policy.installed_denoiser
        inner = self._previous if self._previous is not None else policy.local_denoise
        self.timer = TimedDenoiser(inner, policy.device)

    def __enter__(self) -> TimedDenoiser:
        self.policy.set_denoiser(self.timer)
        return self.timer

    def __exit__(self, *exc: object) -> None:
        self.policy.set_denoiser(self._previous)
