"""Tests for `parapolicy.policy.model.networks`: parameter counts, shapes, conditioning, batching, tracing."""

from __future__ import annotations

import pytest
import torch

from parapolicy.policy.model.networks import (
    ConditionalUnet1d,
    Conv1d,
    ConvTranspose1d,
    GroupNorm1d,
    validate_horizon,
)

Da, C = 2, 6


def _small_net(down_dims: tuple[int, ...] = (16, 32, 64), **kwargs) -> ConditionalUnet1d:
    torch.manual_seed(0)
    kwargs.setdefault("diffusion_step_embed_dim", 32)
    return ConditionalUnet1d(Da, C, down_dims=down_dims, **kwargs).eval()


def _inputs(B: int, H: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, H, Da, generator=g)
    t = torch.randint(0, 100, (B,), generator=g)
    cond = torch.randn(B, C, generator=g)
    return x, t, cond


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # Reference PushT low-dim: Da=2, cond 2 x 20 keypoint obs, dsed 256, (256, 512, 1024), k5, FiLM scale.
        ({"input_dim": 2, "global_cond_dim": 40}, 65_783_298),
        # Same with the 5-d state obs (Colab setting).
        ({"input_dim": 2, "global_cond_dim": 10}, 65_353_218),
        # Reference class defaults: k3, bias-only FiLM.
        ({"input_dim": 2, "global_cond_dim": 40, "kernel_size": 3, "cond_predict_scale": False}, 40_977_922),
        # Image PushT U-Net.
        (
            {
                "input_dim": 2,
                "global_cond_dim": 132,
                "diffusion_step_embed_dim": 128,
                "down_dims": (512, 1024, 2048),
            },
            251_511_938,
        ),
    ],
)
def test_parameter_count_matches_reference(kwargs: dict, expected: int) -> None:
    with torch.device("meta"):
        net = ConditionalUnet1d(**kwargs)
    assert net.num_parameters() == expected
    assert sum(p.numel() for p in net.parameters()) == expected


def test_state_dict_uses_reference_module_names() -> None:
    with torch.device("meta"):
        keys = set(ConditionalUnet1d(2, 40).state_dict())
    for key in [
        "diffusion_step_encoder.1.weight",
        "diffusion_step_encoder.3.weight",
        "down_modules.0.0.blocks.0.block.0.weight",
        "down_modules.0.0.blocks.1.block.1.weight",  # GroupNorm
        "down_modules.0.0.cond_encoder.1.weight",
        "down_modules.0.0.residual_conv.weight",
        "down_modules.0.2.conv.weight",  # Downsample1d
        "mid_modules.1.blocks.1.block.0.bias",
        "up_modules.0.0.residual_conv.weight",
        "up_modules.1.2.conv.weight",  # Upsample1d
        "final_conv.0.block.0.weight",
        "final_conv.1.weight",
    ]:
        assert key in keys, key
    assert not any(k.startswith("down_modules.2.2.") for k in keys)  # last level: no downsample
    assert not any(k.startswith("up_modules.2.") for k in keys)  # first level's skip unused


@pytest.mark.parametrize("down_dims", [(16,), (16, 32), (16, 32, 64), (8, 16, 32, 64)])
@pytest.mark.parametrize("H", [8, 16, 32])
def test_output_shape_equals_input_shape(down_dims: tuple[int, ...], H: int) -> None:
    net = _small_net(down_dims)
    x, t, cond = _inputs(3, H)
    with torch.no_grad():
        out = net(x, t, cond)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_validate_horizon() -> None:
    validate_horizon(16, (256, 512, 1024))
    validate_horizon(4, (256, 512, 1024))
    validate_horizon(3, (64,))
    with pytest.raises(ValueError, match=r"horizon=10.*4"):
        validate_horizon(10, (256, 512, 1024))
    with pytest.raises(ValueError, match=r"horizon=12.*8"):
        validate_horizon(12, (8, 16, 32, 64))
    with pytest.raises(ValueError, match="horizon=0"):
        validate_horizon(0, (16, 32))


def test_forward_rejects_bad_horizon() -> None:
    net = _small_net((16, 32, 64))
    x, t, cond = _inputs(2, H=10)
    with pytest.raises(ValueError, match=r"horizon=10 must be a positive multiple of .*=4"):
        net(x, t, cond)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"diffusion_step_embed_dim": 31}, "embedding dim must be even and >= 4, got 31"),
        ({"diffusion_step_embed_dim": 2}, "embedding dim must be even and >= 4, got 2"),
        ({"kernel_size": 4}, "kernel_size must be odd"),
        ({"n_groups": 5}, "n_groups=5 must divide every width"),
        ({"down_dims": ()}, "down_dims must name at least one level"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConditionalUnet1d(Da, C, **{"down_dims": (16, 32), "diffusion_step_embed_dim": 32, **kwargs})


@pytest.mark.parametrize("cond_predict_scale", [True, False])
def test_conditioning_and_timestep_change_output(cond_predict_scale: bool) -> None:
    net = _small_net(cond_predict_scale=cond_predict_scale)
    x, t, cond = _inputs(2)
    with torch.no_grad():
        base = net(x, t, cond)
        other_cond = net(x, t, cond + 1.0)
        other_t = net(x, (t + 37) % 100, cond)
    assert (base - other_cond).abs().max() > 1e-3
    assert (base - other_t).abs().max() > 1e-3


def test_timestep_forms_agree() -> None:
    net = _small_net()
    x, _, cond = _inputs(4)
    with torch.no_grad():
        full = net(x, torch.full((4,), 42, dtype=torch.long), cond)
        scalar = net(x, torch.tensor(42), cond)  # 0-d broadcast to the batch
        one = net(x, torch.tensor([42]), cond)
        flt = net(x, torch.full((4,), 42.0), cond)
    torch.testing.assert_close(scalar, full, rtol=0, atol=0)
    torch.testing.assert_close(one, full, rtol=0, atol=0)
    torch.testing.assert_close(flt, full, rtol=0, atol=0)
    with pytest.raises(TypeError, match="timestep must be a tensor"):
        net(x, 42, cond)


def test_batch_rows_are_independent() -> None:
    net = _small_net()
    x, t, cond = _inputs(5)
    with torch.no_grad():
        batched = net(x, t, cond)
        for i in range(5):
            alone = net(x[i : i + 1], t[i : i + 1], cond[i : i + 1])
            torch.testing.assert_close(alone, batched[i : i + 1], rtol=1e-5, atol=1e-5)


def test_gradients_flow() -> None:
    net = _small_net().train()
    x, t, cond = _inputs(2)
    net(x, t, cond).square().mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # jit.trace is deprecated in torch >= 2.13
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # torch's own group_norm size check
def test_jit_trace_matches_eager_at_other_batch_sizes_bit_for_bit() -> None:
    net = _small_net()
    with torch.no_grad():
        net(*_inputs(2))  # caches the channels-last weights, as `DiffusionPolicy.set_compile` does
        traced = torch.jit.trace(net, _inputs(2))
        for B in (1, 2, 7):
            x, t, cond = _inputs(B, seed=B + 10)
            assert torch.equal(traced(x, t, cond), net(x, t, cond)), B
        x, _, cond = _inputs(3)
        assert torch.equal(traced(x, torch.tensor(5), cond), net(x, torch.full((3,), 5), cond))


def _convolutions(net: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in net.modules() if isinstance(m, Conv1d | ConvTranspose1d)]


@pytest.mark.parametrize("B", [1, 5])
def test_inference_runs_the_channels_last_layout_with_the_same_outputs(B: int) -> None:
    net = _small_net()
    x, t, cond = _inputs(B)
    reference = net(x, t, cond).detach()  # grad enabled: the (B, C, L) layout
    assert not any(hasattr(m, "_channels_last") for m in _convolutions(net))
    with torch.no_grad():
        inference = net(x, t, cond)
    assert all(hasattr(m, "_channels_last") for m in _convolutions(net))  # every conv ran in 2-D
    torch.testing.assert_close(inference, reference, rtol=1e-5, atol=1e-5)


def test_group_norm_of_the_inference_layout_normalises_each_row() -> None:
    torch.manual_seed(0)
    norm = GroupNorm1d(4, 16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(3, 16, 8) * torch.tensor([1.0, 5.0, 0.1])[:, None, None]  # (R, C, L), rows apart
    x4 = x.permute(1, 0, 2).unsqueeze(0).contiguous(memory_format=torch.channels_last)  # (1, C, R, L)
    out = norm(x4)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out[0].permute(1, 0, 2), norm(x), rtol=1e-5, atol=1e-5)


def test_group_norm_of_one_row_takes_any_stride_of_its_size_one_dims() -> None:
    """A (1, C, 1, L) tensor is channels last whatever its size-1 dims' strides say: the norm reads the
    strides it needs (a position's, C) and its size-1 strides are free."""
    torch.manual_seed(0)
    norm = GroupNorm1d(4, 16)
    x = torch.randn(1, 16, 8)  # (1, C, L)
    odd = torch.empty(16 * 8).as_strided((1, 16, 1, 8), (7, 1, 3, 16))  # size-1 strides 7 and 3
    odd.copy_(x.unsqueeze(2).contiguous(memory_format=torch.channels_last))
    assert odd.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(norm(odd)[:, :, 0], norm(x), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # jit.trace is deprecated in torch >= 2.13
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # torch's own group_norm size check
def test_a_trace_multiplies_one_traced_size_per_group_norm() -> None:
    """The inference layout's strides are constants of the trace: per GroupNorm1d only R·C·L is
    computed on each call (a size product is an interpreter operation on every call)."""
    net = _small_net()
    with torch.no_grad():
        net(*_inputs(2))
        graph = str(torch.jit.trace(net, _inputs(2)).inlined_graph)
    norms = sum(isinstance(m, GroupNorm1d) for m in net.modules())
    assert norms > 4 and graph.count("aten::mul(") <= norms + 2  # (+ the step embedding's)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Conv1d(8, 16, 5, padding=2),
        lambda: Conv1d(8, 8, 3, stride=2, padding=1),
        lambda: Conv1d(8, 4, 1),
        lambda: ConvTranspose1d(8, 8, 4, stride=2, padding=1),
    ],
    ids=["k5", "stride2", "1x1", "transposed"],
)
def test_convolutions_in_the_inference_layout_match_the_stock_ones(make) -> None:
    torch.manual_seed(0)
    conv = make()
    x = torch.randn(3, 8, 8)  # (R, C, L)
    x4 = x.permute(1, 0, 2).unsqueeze(0).contiguous(memory_format=torch.channels_last)  # (1, C, R, L)

    def as_rows(y4: torch.Tensor) -> torch.Tensor:  # (1, C', R, L') -> (R, C', L')
        return y4[0].permute(1, 0, 2)

    with torch.no_grad():
        torch.testing.assert_close(as_rows(conv(x4)), conv(x), rtol=1e-5, atol=1e-5)
        conv.weight.mul_(-2.0)  # an in-place change (e.g. load_state_dict): the cached copy follows
        torch.testing.assert_close(as_rows(conv(x4)), conv(x), rtol=1e-5, atol=1e-5)
    conv.to(torch.float64)  # another dtype: copied again
    with torch.no_grad():
        torch.testing.assert_close(as_rows(conv(x4.double())), conv(x.double()))
