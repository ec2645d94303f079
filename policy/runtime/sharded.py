"""`ShardedDenoiser`: one flat denoiser batch split over local devices (threads), gathered on the home device.

A `Denoiser` (see `parapolicy.policy.diffusion.denoiser`) like any other: the samplers never change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

__all__ = ["ShardedDenoiser"]

DenoiseFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


class ShardedDenoiser:
    """Split a flat batch over local replicas of a denoiser and gather the outputs on the home device.

    The batch is cut with `tensor_split` into one contiguous chunk per replica (sizes differ by at most 1);
    each chunk is copied to its replica's device, evaluated there (on a worker thread, so several devices
    work at once), and the outputs are concatenated in order on the device of the input `x`. Rows are
    independent, so the result equals a single replica's output up to the replicas' own numerics.

    Grad and inference mode are thread-local in PyTorch; the caller's modes are re-applied in each
    worker thread. Call `close()` (or use it as a context manager) to stop the worker threads.

    Args:
        replicas: (denoiser, device) pairs; each denoiser must already live on its device.
    """

    def __init__(self, replicas: Sequence[tuple[DenoiseFn | torch.nn.Module, torch.device | str]]) -> None:
        if len(replicas) == 0:
            raise ValueError("ShardedDenoiser needs at least one replica")
        self.replicas = [(fn, torch.device(dev)) for fn, dev in replicas]
        n = len(self.replicas)
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="denoiser") if n > 1 else None
        self._closed = False

    @property
    def num_replicas(self) -> int:
        """Number of replicas the batch is split over."""
        return len(self.replicas)

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """Evaluate the flat batch; see `Denoiser.__call__` for shapes."""
        if self._closed:
            raise RuntimeError("ShardedDenoiser is closed")
        home = x.device
        back_async = home.type == "cuda"  # a non-blocking copy *to the CPU* could be read before it lands
        n = len(self.replicas)
        xs = torch.tensor_split(x, n)  # n chunks of (N_k, H, D)
        ts = torch.tensor_split(t, n)  # n chunks of (N_k,)
        cs = torch.tensor_split(cond, n) if cond is not None else (None,) * n
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def run(k: int) -> Tensor:
            fn, dev = self.replicas[k]
            if xs[k].shape[0] == 0:
                return torch.empty_like(xs[k])  # output shape equals input shape by contract
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                c = cs[k].to(dev, non_blocking=True) if cs[k] is not None else None
                out = fn(xs[k].to(dev, non_blocking=True), ts[k].to(dev, non_blocking=True), c)
                return out.to(home, non_blocking=back_async)

        if self._pool is None:
            return run(0)
        outs = list(self._pool.map(run, range(n)))
        return torch.cat(outs, dim=0)  # (N, H, D) on the home device

    def close(self) -> None:
        """Stop the worker threads (idempotent)."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> ShardedDenoiser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
