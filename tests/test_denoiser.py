"""ShardedDenoiser: splitting a flat batch over replicas must not change the result."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from parapolicy.policy.diffusion.denoiser import Denoiser
from parapolicy.policy.diffusion.picard import sample_picard
from parapolicy.policy.diffusion.schedules import make_alphas_cumprod, make_step_table, make_timesteps
from parapolicy.policy.diffusion.sequential import draw_noise, sample_sequential
from parapolicy.policy.runtime.sharded import ShardedDenoiser

AC = make_alphas_cumprod("squaredcos_cap_v2", 100)


def elementwise(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    c = 0.0 if cond is None else cond[:, :1].view(-1, 1, 1)
    return torch.tanh(1.2 * x + c) * 0.5 + 0.001 * t.view(-1, 1, 1).to(x.dtype)


class TinyNet(nn.Module):
    """A small MLP over (flattened sample, timestep, cond) with the Denoiser signature."""

    def __init__(self, H: int = 16, D: int = 2, C: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(H * D + 1 + C, 64), nn.Mish(), nn.Linear(64, H * D))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        B = x.shape[0]
        h = torch.cat([x.reshape(B, -1), t.view(B, 1).float() / 100, cond], dim=1)  # (B, H*D + 1 + C)
        return self.net(h).view_as(x)  # (B, H*D) -> (B, H, D)


def inputs(N: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(N, 16, 2, generator=g),
        torch.randint(0, 100, (N,), generator=g),
        torch.randn(N, 4, generator=g),
    )


@pytest.mark.parametrize(("replicas", "N"), [(1, 7), (2, 7), (3, 7), (3, 2), (2, 0)])
def test_split_gather_equals_single_call(replicas: int, N: int) -> None:
    x, t, c = inputs(N)
    with ShardedDenoiser([(elementwise, "cpu")] * replicas) as sharded:
        assert sharded.num_replicas == replicas
        out = sharded(x, t, c)
        assert torch.equal(out, elementwise(x, t, c))
        assert torch.equal(sharded(x, t, None), elementwise(x, t, None))


def test_module_replicas_match_one_module_and_keep_grad_mode() -> None:
    torch.manual_seed(0)
    net = TinyNet()
    x, t, c = inputs(9)
    with ShardedDenoiser([(net, "cpu"), (copy.deepcopy(net), torch.device("cpu"))]) as sharded:
        with torch.no_grad():
            ref = net(x, t, c)
            out = sharded(x, t, c)
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
        assert not out.requires_grad  # no_grad reached the worker threads
        assert sharded(x, t, c).requires_grad  # and so does grad mode
        with torch.inference_mode():
            assert sharded(x, t, c).is_inference()


def test_rows_go_to_replicas_in_contiguous_chunks() -> None:
    seen: list[list[int]] = [[], []]

    def recorder(k: int):
        def fn(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
            seen[k].extend(t.tolist())
            return x

        return fn

    with ShardedDenoiser([(recorder(0), "cpu"), (recorder(1), "cpu")]) as sharded:
        sharded(torch.zeros(5, 16, 2), torch.arange(5), None)
    assert seen == [[0, 1, 2], [3, 4]]


@pytest.mark.parametrize("kind", ["ddpm", "dpmsolver++"])
def test_samplers_with_sharded_denoiser_match_single(kind: str) -> None:
    tab = make_step_table(AC, make_timesteps(100, 20), kind=kind)  # type: ignore[arg-type]
    x_T, noise = draw_noise(tab, (3, 16, 2), torch.Generator().manual_seed(1))
    cond = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    with ShardedDenoiser([(elementwise, "cpu"), (elementwise, "cpu")]) as sharded:
        for run in (
            lambda d: sample_sequential(d, x_T, tab, noise, cond),
            lambda d: sample_picard(d, x_T, tab, noise, cond, window=8, tol=0.05),
        ):
            one, two = run(elementwise), run(sharded)
            assert torch.equal(one.sample, two.sample) and one.iterations == two.iterations


def test_protocol_and_close() -> None:
    sharded = ShardedDenoiser([(elementwise, "cpu"), (elementwise, "cpu")])
    assert isinstance(sharded, Denoiser) and isinstance(TinyNet(), Denoiser)
    sharded.close()
    sharded.close()
    with pytest.raises(RuntimeError, match="ShardedDenoiser is closed"):
        sharded(*inputs(2))
    with pytest.raises(ValueError, match="at least one replica"):
        ShardedDenoiser([])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_home_with_a_cuda_replica() -> None:
    x, t, c = inputs(9)
    with ShardedDenoiser([(elementwise, "cpu"), (elementwise, "cuda")]) as sharded:
        out = sharded(x, t, c)
    assert out.device.type == "cpu"
    torch.testing.assert_close(out, elementwise(x, t, c), rtol=1e-5, atol=1e-6)
