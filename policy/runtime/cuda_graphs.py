"""CUDA-graph replay of the denoiser network for the batch shapes the samplers use (torch only).

A Picard iteration or a sequential step is one small network call: on a GPU its cost is dominated by
launching ~100 kernels, not by the arithmetic. A CUDA graph records those launches once for fixed
input shapes and replays them with one launch. `GraphedDenoiser` keeps one graph per *row bucket* (the
next power of two at or above the call's row count, so a Picard solve whose window shrinks at the end
of the schedule needs a handful of graphs, not one per row count), captured lazily the first time a
bucket is seen: the inputs are copied into the first R rows of the bucket's static buffers, the graph
is replayed, and the first R rows of its static output are returned as a fresh tensor. Padding rows
keep whatever the buffers held: the network treats rows independently (GroupNorm normalises within a
row), so they cannot change the returned rows.

Capture follows PyTorch's recipe: a few eager warm-up calls on a side stream (cuBLAS/cuDNN workspaces,
autotuning), then `torch.cuda.graph`; all graphs share one memory pool. The network must be free of
host synchronisation and of data-dependent shapes (the U-Net is). Library module: no hydra.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["GraphedDenoiser", "row_bucket"]

_WARMUP_CALLS = 3


def row_bucket(rows: int) -> int:
    """The graph bucket of a call with ``rows`` rows: the next power of two >= rows."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    return 1 << (rows - 1).bit_length()


class GraphedDenoiser:
    """Callable ``(N, H, Da), (N,), (N, C) | None -> (N, H, Da)`` replaying per-bucket CUDA graphs.

    Args:
        network: the denoiser network (on ``device``; each graph is captured in eval mode and the
            network's mode given back); called as ``network(x, t, cond)``.
        device: a CUDA device.
        sample_shape: (H, Da) of one row.
        cond_dim: C, the conditioning width (0: the network takes ``cond=None``).

    Raises:
        ValueError: when ``device`` is not a CUDA device or CUDA is unavailable.
    """

    def __init__(
        self, network: nn.Module, device: torch.device | str, sample_shape: tuple[int, int], cond_dim: int
    ) -> None:
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        self.network, self.device = network, device
        self.dtype = next(network.parameters()).dtype
        self.sample_shape, self.cond_dim = tuple(sample_shape), int(cond_dim)
        self._pool: Any = None  # one memory pool shared by every graph
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor | None, Tensor]] = {}

    @property
    def buckets(self) -> tuple[int, ...]:
        """Row buckets captured so far."""
        return tuple(sorted(self._graphs))

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        rows = x.shape[0]
        if tuple(x.shape[1:]) != self.sample_shape:
            H, D = self.sample_shape
            raise ValueError(f"x must be (N, {H}, {D}), got {tuple(x.shape)}")
        if (cond is None) != (self.cond_dim == 0):
            raise ValueError(f"cond must be {'None' if self.cond_dim == 0 else f'(N, {self.cond_dim})'}")
        graph, sx, st, sc, out = self._graphs.get(row_bucket(rows)) or self._capture(row_bucket(rows))
        sx[:rows].copy_(x)
        st[:rows].copy_(t)
        if sc is not None:
            sc[:rows].copy_(cond)
        graph.replay()
        return out[:rows].clone()  # the static output is overwritten by the next replay

    def _capture(self, bucket: int) -> tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor | None, Tensor]:
        dev = self.device
        sx = torch.zeros((bucket, *self.sample_shape), dtype=self.dtype, device=dev)  # (bucket, H, Da)
        st = torch.zeros(bucket, dtype=torch.long, device=dev)  # (bucket,)
        sc = None  # (bucket, C) static conditioning
        if self.cond_dim:
            sc = torch.zeros((bucket, self.cond_dim), dtype=self.dtype, device=dev)
        was_training = self.network.training  # captured in eval mode, then the mode is given back
        self.network.eval()
        try:
            side = torch.cuda.Stream(device=dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.no_grad(), torch.cuda.stream(side):
                for _ in range(_WARMUP_CALLS):
                    self.network(sx, st, sc)
            torch.cuda.current_stream(dev).wait_stream(side)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(graph, pool=self._pool):
                out = self.network(sx, st, sc)  # (bucket, H, Da) static output
        finally:
            self.network.train(was_training)
        self._graphs[bucket] = (graph, sx, st, sc, out)
        return self._graphs[bucket]
