"""The fixed-shape Picard iteration (`PicardGraph`): the same iterations and sample as `sample_picard`.

On the CPU the iteration runs eagerly; on CUDA the same code is replayed as one CUDA graph.
"""

from __future__ import annotations

import pytest
import torch

from parapolicy.policy.diffusion.picard import sample_picard
from parapolicy.policy.diffusion.schedules import make_alphas_cumprod, make_step_table, make_timesteps
from parapolicy.policy.diffusion.sequential import draw_noise, sample_sequential
from parapolicy.policy.runtime.graphed_picard import PicardGraph

T = 100
AC = make_alphas_cumprod("squaredcos_cap_v2", T)


def mixture_denoiser(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    """Exact ε for per-element data x_0 ∈ {-m, +m} (+ N(0, 0.05²)), m set by the conditioning (row-wise)."""
    a = AC.to(x.dtype).to(x.device)[t].view(-1, 1, 1)
    m = 0.6 + 0.3 * torch.tanh(cond[:, :1]).view(-1, 1, 1)
    v = a * 0.05**2 + (1 - a)
    return (1 - a).sqrt() * (x - a.sqrt() * m * torch.tanh(a.sqrt() * m * x / v)) / v


def setup(kind: str, K: int, B: int, device: str = "cpu", seed: int = 0):
    tab = make_step_table(AC, make_timesteps(T, K), kind=kind, device=device)
    gen = torch.Generator().manual_seed(seed)
    x_T, noise = draw_noise(tab, (B, 16, 2), gen, device=device)
    cond = torch.randn(B, 4, generator=gen).to(device)
    return tab, x_T, noise, cond


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
@pytest.mark.parametrize(("K", "window", "B"), [(100, 8, 1), (100, 16, 3), (16, 16, 2), (20, 32, 1)])
@pytest.mark.parametrize("tol", [0.0, 0.1])
def test_same_iterations_and_sample_as_sample_picard(kind, K, window, B, tol):
    tab, x_T, noise, cond = setup(kind, K, B)
    ref = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=window, tol=tol, refill="x0_rollout")
    got = PicardGraph(mixture_denoiser, tab, (B, 16, 2), 4, window=window, tol=tol).sample(x_T, noise, cond)
    assert got.iterations == ref.iterations and got.all_converged
    torch.testing.assert_close(got.sample, ref.sample, rtol=0, atol=0)
    if tol == 0.0:  # the fixed point: the sequential sample
        seq = sample_sequential(mixture_denoiser, x_T, tab, noise, cond)
        torch.testing.assert_close(got.sample, seq.sample, rtol=0, atol=1e-5)


def test_warm_start_guess_and_reuse_for_new_inputs():
    tab, x_T, noise, cond = setup("ddpm", 50, 2)
    graph = PicardGraph(mixture_denoiser, tab, (2, 16, 2), 4, window=8, tol=0.1)
    first = graph.sample(x_T, noise, cond)
    guess = first.sample.roll(-4, dims=1)
    ref = sample_picard(
        mixture_denoiser, x_T, tab, noise, cond, window=8, tol=0.1, x0_guess=guess, refill="x0_rollout"
    )
    again = graph.sample(x_T, noise, cond, x0_guess=guess)  # the static state is reloaded for each call
    assert again.iterations == ref.iterations
    torch.testing.assert_close(again.sample, ref.sample, rtol=0, atol=1e-6)


def test_refusals():
    tab, x_T, noise, cond = setup("dpmsolver++", 10, 1)
    with pytest.raises(ValueError, match="DDPM and DDIM"):
        PicardGraph(mixture_denoiser, tab, (1, 16, 2), 4, window=4, tol=0.1)
    tab, x_T, noise, cond = setup("ddpm", 10, 1)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA table"):
        PicardGraph(mixture_denoiser, tab, (1, 16, 2), 4, window=4, tol=0.1, graph=True)
    with pytest.raises(ValueError, match="window"):
        PicardGraph(mixture_denoiser, tab, (1, 16, 2), 4, window=0, tol=0.1)
    graph = PicardGraph(mixture_denoiser, tab, (1, 16, 2), 4, window=4, tol=0.1)
    with pytest.raises(ValueError, match="x_T must have shape"):
        graph.sample(x_T.expand(2, 16, 2), noise.expand(10, 2, 16, 2), cond.expand(2, 4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("tol", [0.0, 0.1])
def test_cuda_graph_replay_equals_eager(tol):
    tab, x_T, noise, cond = setup("ddpm", 100, 1, device="cuda")
    eager = PicardGraph(mixture_denoiser, tab, (1, 16, 2), 4, window=16, tol=tol, graph=False)
    graphed = PicardGraph(mixture_denoiser, tab, (1, 16, 2), 4, window=16, tol=tol, graph=True)
    a, b = eager.sample(x_T, noise, cond), graphed.sample(x_T, noise, cond)
    assert a.iterations == b.iterations
    torch.testing.assert_close(b.sample, a.sample, rtol=0, atol=0)
