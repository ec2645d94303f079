"""Tests for `parapolicy.policy.runtime.cpu_graphs`: the closed-form Mish, the oneDNN-prepacked
convolutions against the network's own, the narrow / wide graphs against the eager network, and
the plain trace where prepacking does not apply."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from parapolicy.policy.model.networks import ConditionalUnet1d, Conv1d, Conv1dBlock, ConvTranspose1d
from parapolicy.policy.runtime import cpu_graphs
from parapolicy.policy.runtime.cpu_graphs import (
    WIDE_ROWS,
    CpuGraphs,
    ExpMish,
    PackedConv1d,
    PackedConvTranspose1d,
    TracedNetwork,
    prepacking_available,
    trace_network,
)

needs_onednn = pytest.mark.skipif(
    not prepacking_available(torch.device("cpu"), torch.float32), reason="PyTorch built without oneDNN"
)
Da, C = 2, 6


def _layout(rows: int, channels: int, length: int, seed: int = 0) -> torch.Tensor:
    """(1, channels, rows, length) channels last: the network's inference layout."""
    x = torch.randn(1, channels, rows, length, generator=torch.Generator().manual_seed(seed))
    return x.contiguous(memory_format=torch.channels_last)


def _net() -> ConditionalUnet1d:
    torch.manual_seed(0)
    return ConditionalUnet1d(Da, C, diffusion_step_embed_dim=32, down_dims=(16, 32, 64)).eval()


def _inputs(rows: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 16, Da, generator=g)  # (R, H, Da)
    return x, torch.randint(0, 100, (rows,), generator=g), torch.randn(rows, C, generator=g)


def test_exp_mish_is_mish_everywhere_including_overflow() -> None:
    x = torch.cat((torch.linspace(-40.0, 100.0, 100_001), torch.tensor([-1e30, -1e4, 0.0, 1e4, 1e30])))
    reference = (x.double() * torch.tanh(F.softplus(x.double()))).float()  # float64 Mish, rounded
    got = ExpMish()(x.clone())
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, reference, atol=4e-6, rtol=2e-6)
    assert got[-1] == 1e30 and got[-2] == 1e4  # e^x = inf gives x
    assert got[x < -17].abs().max() < 1e-6  # Mish underflows to 0 there (it is below 1e-6)


@needs_onednn
@pytest.mark.parametrize("rows", [1, 7, 24, 50])
@pytest.mark.parametrize(
    ("c_in", "c_out", "kernel", "stride", "padding", "length"),
    [(16, 32, 5, 1, 2, 16), (32, 32, 3, 2, 1, 8), (64, 2, 1, 1, 0, 4)],  # block, downsample, 1x1 head
)
def test_packed_conv_is_the_network_convolution(rows, c_in, c_out, kernel, stride, padding, length) -> None:
    torch.manual_seed(0)
    conv = Conv1d(c_in, c_out, kernel, stride=stride, padding=padding)
    x = _layout(rows, c_in, length)
    with torch.no_grad():
        expected = conv(x)
        packed = PackedConv1d(conv, 24)  # packed for 24 rows, called with any row count
        got = packed(x)
        assert packed.packed is not None and packed.packed.is_mkldnn
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert got.is_contiguous(memory_format=torch.channels_last)


@needs_onednn
@pytest.mark.parametrize("rows", [1, 24])
def test_packed_conv_transpose_is_the_network_upsampling(rows) -> None:
    torch.manual_seed(0)
    conv = ConvTranspose1d(32, 32, 4, stride=2, padding=1)
    x = _layout(rows, 32, 8)
    with torch.no_grad():
        torch.testing.assert_close(PackedConvTranspose1d(conv, 1)(x), conv(x), atol=1e-5, rtol=1e-5)


@needs_onednn
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # jit.trace is deprecated in torch >= 2.13
def test_a_convolution_must_be_packed_before_it_is_traced() -> None:
    packed = PackedConv1d(Conv1d(4, 4, 3, padding=1), 1)
    with torch.no_grad(), pytest.raises(RuntimeError, match="eager call before tracing"):
        torch.jit.trace(packed, (_layout(2, 4, 8),), check_trace=False)


@needs_onednn
def test_narrow_and_wide_graphs_compute_the_eager_network() -> None:
    net = _net()
    graphs = CpuGraphs(net, _inputs(2))
    calls = []
    for name in ("narrow", "wide"):  # record which graph serves each call
        graph = getattr(graphs, name)
        setattr(graphs, name, lambda *a, graph=graph, name=name: calls.append(name) or graph(*a))
    with torch.no_grad():
        for rows in (1, WIDE_ROWS - 1, WIDE_ROWS, 24, 50):
            x, t, cond = _inputs(rows, seed=rows)
            torch.testing.assert_close(graphs(x, t, cond), net(x, t, cond), atol=1e-5, rtol=1e-5)
    assert calls == ["narrow", "narrow", "wide", "wide", "wide"]


@needs_onednn
def test_a_wide_call_converts_no_constant_per_mish() -> None:
    """The wide graph's Mish adds a 0-d float buffer, not a traced int 1 that every call converts
    (one conversion per Conv1dBlock: an operation more each, on the latency path)."""
    net = _net()
    graphs = CpuGraphs(net, _inputs(2))
    x, t, cond = _inputs(24)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        graphs(x, t, cond)
    blocks = sum(isinstance(m, Conv1dBlock) for m in net.modules())  # each with an ExpMish
    conversions = [e for e in prof.events() if e.name == "aten::_to_copy"]
    assert blocks > 10 and len(conversions) <= 1  # the step embedding's one cast of t


@needs_onednn
@pytest.mark.parametrize("exp_mish", [False, True])
def test_the_copies_share_the_parameters_and_replace_every_convolution(exp_mish) -> None:
    net = _net()
    copy = cpu_graphs._inference_copy(net, 24, exp_mish=exp_mish)
    assert {id(p) for p in copy.parameters()} == {id(p) for p in net.parameters()}
    kinds = [type(m) for m in copy.modules()]
    assert kinds.count(PackedConv1d) == sum(type(m) is Conv1d for m in net.modules())
    assert kinds.count(PackedConvTranspose1d) == sum(type(m) is ConvTranspose1d for m in net.modules())
    blocks = sum(type(m).__name__ == "Conv1dBlock" for m in net.modules())
    assert kinds.count(ExpMish) == (blocks if exp_mish else 0)
    mish = sum(type(m) is torch.nn.Mish for m in net.modules())  # the conditioning path keeps it
    assert kinds.count(torch.nn.Mish) == mish - kinds.count(ExpMish)


@needs_onednn
def test_the_narrow_copy_packs_only_the_large_convolutions() -> None:
    net = _net()
    convs = {name: m for name, m in net.named_modules() if type(m) in (Conv1d, ConvTranspose1d)}
    copy = cpu_graphs._inference_copy(net, 1, exp_mish=False, min_packed=5_000)
    packed = {name for name, m in copy.named_modules() if isinstance(m, PackedConv1d | PackedConvTranspose1d)}
    assert packed == {name for name, m in convs.items() if m.weight.numel() >= 5_000}
    assert 0 < len(packed) < len(convs)


def test_without_prepacking_the_policy_trace_is_the_eager_network_bit_for_bit(tiny_policy) -> None:
    policy = tiny_policy.double()  # float64: no prepacking
    assert not prepacking_available(policy.device, torch.float64)
    policy.set_compile("trace")
    assert isinstance(policy._compiled, TracedNetwork)  # one trace, not the two CPU graphs
    g = torch.Generator().manual_seed(3)
    x, cond = torch.randn(5, 16, 2, generator=g).double(), torch.randn(5, 40, generator=g).double()
    t = torch.randint(0, 100, (5,), generator=g)
    with torch.no_grad():
        traced = policy.denoise(x, t, cond)
        policy.set_compile("none")
        assert torch.equal(traced, policy.denoise(x, t, cond))


def test_trace_network_serves_other_row_counts_bit_for_bit() -> None:
    net = _net()
    traced = trace_network(net, _inputs(2))
    with torch.no_grad():
        for rows in (1, 9, 30):
            x, t, cond = _inputs(rows, seed=rows)
            assert torch.equal(traced(x, t, cond), net(x, t, cond))
    x, t, cond = _inputs(3)
    longer = torch.cat([x, x], dim=1)  # (3, 2H, Da): the trace keeps sizes read from H
    with pytest.raises(ValueError, match=r"serves rows of shape \(16, 2\) .* got \(32, 2\)"):
        traced(longer, t, cond)
    graphs = CpuGraphs(net, _inputs(2))
    for rows in (3, 12):  # the narrow and the wide graph
        x, t, cond = _inputs(rows)
        with pytest.raises(ValueError, match="trace it again"):
            graphs(torch.cat([x, x], dim=1), t, cond)
    x, t, cond = _inputs(3)
    wider = torch.cat([cond, cond], dim=1)  # (3, 2C): the condition's width is traced in too
    message = rf"conditions of shape \({C},\), got \(16, 2\) and \({2 * C},\)"
    for served in (traced, graphs):
        with pytest.raises(ValueError, match=message):
            served(x, t, wider)
