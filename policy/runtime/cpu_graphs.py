"""The CPU inference graphs of the denoiser network: oneDNN-prepacked convolutions, one traced graph
for narrow calls and one for wide ones (torch only).

The samplers call the network with a few rows (a sequential step: one row per sample) or with many
(a Picard window: up to the window length per sample). On 2 CPU cores the two cost different things:
a one-row call is bound by each operation's fixed cost, a wide call by arithmetic and by Mish, whose
PyTorch kernel runs on one thread below 32,768 elements (a 24-row call of the shipped network has
24,576 per layer). So `CpuGraphs` keeps two copies of the network's inference layout
(`networks.ConditionalUnet1d`, (1, C, R, L) channels last), each traced once:

- the convolutions run through oneDNN with their weights reordered once, ahead of time, into the
  layout oneDNN picks for the graph's row count (`PackedConv1d`, `PackedConvTranspose1d`; PyTorch's
  own call reorders the weight on every call, or takes its im2col kernel for small inputs). The
  wide graph packs every convolution, for `WIDE_PACK_ROWS` rows; the narrow graph packs for one
  row those with at least `NARROW_PACKED_MIN_WEIGHTS` weights and leaves the smaller ones to
  PyTorch's im2col kernel, which is the cheaper of the two there;
- the wide graph's Conv1dBlocks run Mish in closed form (`ExpMish`), five cheap elementwise kernels
  instead of one slow one: cheaper on wide calls, dearer on narrow ones.

Calls of fewer than `WIDE_ROWS` rows take the narrow graph, the others the wide one. Both compute
the eager network's function within float32 rounding (oneDNN accumulates in another order than
PyTorch's im2col kernel; the eager network is not row-count invariant to the bit either). The copies
share the network's parameters; only the packed weights are new. Measured figures:
docs/benchmarks.md, "Session 13". Library module: no hydra.
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
from torch import Tensor, nn

from parapolicy.policy.model.networks import Conv1d, Conv1dBlock, ConvTranspose1d

__all__ = [
    "NARROW_PACKED_MIN_WEIGHTS",
    "WIDE_PACK_ROWS",
    "WIDE_ROWS",
    "CpuGraphs",
    "ExpMish",
    "PackedConv1d",
    "PackedConvTranspose1d",
    "prepacking_available",
    "serves",
    "TracedNetwork",
    "trace_network",
]

WIDE_ROWS = 8  # calls of at least this many rows take the wide graph
WIDE_PACK_ROWS = 24  # the row count the wide graph's weights are packed for (a Picard window)
_NARROW_PACK_ROWS = 1
NARROW_PACKED_MIN_WEIGHTS = 150_000  # the narrow graph packs the convolutions with this many weights


def prepacking_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `CpuGraphs` can serve a network on ``device`` in ``dtype``: float32 on the CPU, with
    PyTorch built with oneDNN (its prepacked-convolution operators present)."""
    ops = torch.ops.mkldnn
    return (
        device.type == "cpu"
        and dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(ops, "_convolution_pointwise")
        and hasattr(ops, "_convolution_transpose_pointwise")
    )


def serves(network: nn.Module, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `CpuGraphs` applies to ``network``: `prepacking_available` there, and the network has
    convolutions to pack (a transformer denoiser has none: one trace serves it)."""
    has_convolutions = any(isinstance(m, Conv1d | ConvTranspose1d) for m in network.modules())
    return has_convolutions and prepacking_available(device, dtype)


def _packed_conv(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    padding: list[int],
    stride: list[int],
    dilation: list[int],
    groups: int,
) -> Tensor:
    """oneDNN's convolution with a prepacked weight (scripted: the tracer cannot record the operator's
    empty list of post-op scalars)."""
    scalars: list[int | float | complex | None] = []
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight, bias, padding, stride, dilation, groups, "none", scalars, ""
    )


def _packed_conv_transpose(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    padding: list[int],
    output_padding: list[int],
    stride: list[int],
    dilation: list[int],
    groups: int,
) -> Tensor:
    """oneDNN's transposed convolution with a prepacked weight (scripted, as `_packed_conv`)."""
    scalars: list[int | float | complex | None] = []
    return torch.ops.mkldnn._convolution_transpose_pointwise(
        x, weight, bias, padding, output_padding, stride, dilation, groups, "none", scalars, ""
    )


with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script's, from torch 2.13
    _packed_conv = torch.jit.script(_packed_conv)
    _packed_conv_transpose = torch.jit.script(_packed_conv_transpose)


class _Packed(nn.Module):
    """A convolution of the inference layout whose weight oneDNN packs on the first call, for the
    call's channels and length and a fixed row count; the packed copy is a non-persistent buffer, so
    a trace made after that call holds it. ``geometry``: the arguments oneDNN's reorder and
    convolution take after the weight, the 1-D ones as those of a (1, k) kernel over (R, L)."""

    def __init__(self, conv: Conv1d | ConvTranspose1d, rows: int) -> None:
        super().__init__()
        for cache in ("_channels_last", "_channels_last_key"):  # `networks.Conv1d`'s, copied: unused here
            conv.__dict__.pop(cache, None)
        self.conv, self.rows = conv, rows  # the original module: its weight and bias
        self.geometry = self._geometry(conv)
        self.register_buffer("packed", None, persistent=False)

    @staticmethod
    def _geometry(conv: nn.Module) -> tuple:
        raise NotImplementedError

    def _pack(self, weight: Tensor, size: list[int]) -> Tensor:
        raise NotImplementedError

    def _weight(self, x: Tensor) -> Tensor:
        """The packed weight, packed now on the first call (x: (1, C_in, R, L))."""
        if self.packed is None:
            if torch.jit.is_tracing():
                raise RuntimeError("pack the convolutions with an eager call before tracing")
            weight = self.conv.weight.detach().unsqueeze(2)  # (A, B, 1, k)
            self.packed = self._pack(weight, [1, x.shape[1], self.rows, x.shape[3]])
        return self.packed


class PackedConv1d(_Packed):
    """`networks.Conv1d` in the inference layout, (1, C_in, R, L) -> (1, C_out, R, L_out) channels
    last, with its weight packed by oneDNN once."""

    @staticmethod
    def _geometry(conv: nn.Module) -> tuple:
        """padding, stride, dilation, groups."""
        return [0, conv.padding[0]], [1, conv.stride[0]], [1, conv.dilation[0]], conv.groups

    def _pack(self, weight: Tensor, size: list[int]) -> Tensor:
        return torch.ops.mkldnn._reorder_convolution_weight(weight, *self.geometry, size)

    def forward(self, x: Tensor) -> Tensor:
        """(1, C_in, R, L) channels last -> (1, C_out, R, L_out) channels last."""
        return _packed_conv(x, self._weight(x), self.conv.bias, *self.geometry)


class PackedConvTranspose1d(_Packed):
    """`networks.ConvTranspose1d` in the inference layout, with its weight packed by oneDNN once."""

    @staticmethod
    def _geometry(conv: nn.Module) -> tuple:
        """padding, output padding, stride, dilation, groups."""
        stride, dilation = [1, conv.stride[0]], [1, conv.dilation[0]]
        return [0, conv.padding[0]], [0, conv.output_padding[0]], stride, dilation, conv.groups

    def _pack(self, weight: Tensor, size: list[int]) -> Tensor:
        return torch.ops.mkldnn._reorder_convolution_transpose_weight(weight, *self.geometry, size)

    def forward(self, x: Tensor) -> Tensor:
        """(1, C_in, R, L) channels last -> (1, C_out, R, L_out) channels last."""
        return _packed_conv_transpose(x, self._weight(x), self.conv.bias, *self.geometry)


class ExpMish(nn.Module):
    """Mish, x·tanh(softplus(x)), as x - 2x / ((eˣ + 1)² + 1): the same function (tanh(ln(1 + eˣ)) =
    1 - 2 / ((1 + eˣ)² + 1)) in five elementwise kernels, all of them cheap; PyTorch's Mish kernel
    is one slow one. eˣ is computed as 2^(x·log₂e) (PyTorch's exp2 kernel is the cheaper of the two)
    and the last two kernels write in place: **it overwrites its input**, which is a Conv1dBlock's
    GroupNorm output, read by nothing else. Overflow-safe: eˣ = inf gives x. Within 4e-6 of `F.mish`
    absolutely; where Mish is below about 1e-7 (x < -17) it returns 0."""

    def __init__(self) -> None:
        super().__init__()
        # 0-d float buffers: they broadcast, and a traced Python number would be converted per call
        self.register_buffer("one", torch.ones(()), persistent=False)
        self.register_buffer("log2_e", torch.tensor(math.log2(math.e)), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Elementwise, any shape; returns ``x``, overwritten."""
        e1 = torch.mul(x, self.log2_e).exp2_().add_(self.one)  # eˣ + 1
        denominator = torch.addcmul(self.one, e1, e1, out=e1)  # (eˣ + 1)² + 1, in place
        return x.addcdiv_(x, denominator, value=-2)


def _inference_copy(network: nn.Module, rows: int, exp_mish: bool, min_packed: int = 0) -> nn.Module:
    """A copy of ``network`` sharing its parameters and buffers, its convolutions with at least
    ``min_packed`` weights packed for ``rows`` rows and, with ``exp_mish``, its Conv1dBlocks' Mish
    replaced by `ExpMish`."""
    memo = {id(t): t for t in (*network.parameters(), *network.buffers())}
    clone = copy.deepcopy(network, memo)
    for module in list(clone.modules()):
        for name, child in module.named_children():
            packs = isinstance(child, Conv1d | ConvTranspose1d) and child.weight.numel() >= min_packed
            if packs and isinstance(child, Conv1d):
                setattr(module, name, PackedConv1d(child, rows))
            elif packs:
                setattr(module, name, PackedConvTranspose1d(child, rows))
            elif exp_mish and isinstance(child, Conv1dBlock):
                child.block[2] = ExpMish()
    return clone.eval()


class CpuGraphs:
    """Callable ``(N, H, Da), (N,), (N, C) -> (N, H, Da)``: the narrow graph below `WIDE_ROWS` rows,
    the wide one from there (see the module docstring).

    Args:
        network: the denoiser network on the CPU in float32 (`serves`).
        example: ``(x, t, cond)``, inputs of two rows to trace with.
    """

    def __init__(self, network: nn.Module, example: tuple[Tensor, Tensor, Tensor]) -> None:
        narrow = _inference_copy(network, _NARROW_PACK_ROWS, False, NARROW_PACKED_MIN_WEIGHTS)
        self.narrow = trace_network(narrow, example)
        self.wide = trace_network(_inference_copy(network, WIDE_PACK_ROWS, exp_mish=True), example)

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        return (self.wide if x.shape[0] >= WIDE_ROWS else self.narrow)(x, t, cond)


class TracedNetwork:
    """Callable ``(N, H, Da), (N,), (N, C) -> (N, H, Da)``: a traced network for any row count N, at the
    per-row shapes it was traced at; a call with other ones is refused, not answered wrongly (the trace
    keeps sizes it read from them as constants: `networks.GroupNorm1d`'s strides)."""

    def __init__(self, graph: torch.jit.ScriptModule, example: tuple[Tensor, Tensor, Tensor]) -> None:
        self.graph = graph
        self.sample_shape, self.cond_shape = example[0].shape[1:], example[2].shape[1:]

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        if x.shape[1:] != self.sample_shape or (cond is not None and cond.shape[1:] != self.cond_shape):
            got = (tuple(x.shape[1:]), None if cond is None else tuple(cond.shape[1:]))
            raise ValueError(
                f"the traced network serves rows of shape {tuple(self.sample_shape)} with conditions of "
                f"shape {tuple(self.cond_shape)}, got {got[0]} and {got[1]}: trace it again for these"
            )
        return self.graph(x, t, cond)


def trace_network(network: nn.Module, example: tuple[Tensor, Tensor, Tensor]) -> TracedNetwork:
    """``network`` traced at ``example`` (inputs of a few rows), after one eager call that fills its
    caches (`networks.Conv1d`'s channels-last weights, the packed weights here): the trace holds them.
    The network has no value- or size-dependent control flow, so the trace serves every row count (at
    the example's per-row shapes: `TracedNetwork`)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit.trace's deprecation and tracer warnings
        network(*example)
        return TracedNetwork(torch.jit.trace(network, example, check_trace=False), example)
