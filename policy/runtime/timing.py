"""Device-synchronised timing: `timed_call` (one call), `TimedDenoiser` (the one timed denoiser wrapper).

Every wall-clock measurement of sampling or of the network (the controller's latency sections, the
sampler benchmark, the auto window's cost curve, the GPU script) goes through `timed_call`, so all of
them time the same thing the same way: queued device work is waited for before and after (`sync_device`),
then the host clock is read. `TimedDenoiser` applies it to every denoiser call and keeps the number of
calls and rows; `timed_denoiser` installs one around a policy's denoiser with `set_denoiser`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, TypeVar

import torch
from torch import Tensor

from parapolicy.policy.diffusion.sequential import sync_device

__all__ = ["TimedDenoiser", "timed_call", "timed_denoiser"]

DenoiseFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]
T = TypeVar("T")


def timed_call(fn: Callable[[], T], device: torch.device | str) -> tuple[float, T]:
    """Run ``fn()`` and return (seconds, its result), waiting for ``device``'s queued work before and after.

    The wait before keeps earlier work out of the figure; the wait after puts the call's own device work
    in it (both are no-ops off CUDA).
    """
    sync_device(device)
    start = time.perf_counter()
    out = fn()
    sync_device(device)
    return time.perf_counter() - start, out


class _RoutesDenoiser(Protocol):
    """What `timed_denoiser` needs of a policy (`DiffusionPolicy` has it)."""

    device: torch.device
    installed_denoiser: DenoiseFn | None

    def local_denoise(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor: ...

    def set_denoiser(self, denoiser: DenoiseFn | None) -> None: ...


class TimedDenoiser:
    """Wrap a denoiser and record the device-synchronised time (`timed_call`), calls and rows of every call.

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
        self.call_seconds: list[float] = []  # each call's own time, in order

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """Evaluate ``inner`` on the flat batch and record its time; shapes as `Denoiser.__call__`."""
        seconds, out = timed_call(lambda: self.inner(x, t, cond), self.device)
        self.seconds += seconds
        self.call_seconds.append(seconds)
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
