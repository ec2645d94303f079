"""Diffusion inpainting (known rows imposed in the shared step): parity, exactness, outside references."""

from __future__ import annotations

import math

import pytest
import torch

from parapolicy.policy.diffusion.inpaint import Inpaint, inpaint_start, prepare_inpaint, soft_prefix_weights
from parapolicy.policy.diffusion.picard import sample_picard
from parapolicy.policy.diffusion.schedules import make_alphas_cumprod, make_step_table, make_timesteps
from parapolicy.policy.diffusion.sequential import draw_noise, sample_sequential

T = 100
AC = make_alphas_cumprod("squaredcos_cap_v2", T)
KINDS = ["ddpm", "ddim", "dpmsolver++"]
H, D = 16, 2


def mixture_denoiser(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    """Exact ε for per-element data x_0 ∈ {-m, +m} (+ N(0, 0.05²)), m set by the conditioning (nonlinear)."""
    a = AC.to(x.dtype)[t].view(-1, 1, 1)
    m = 0.6 + 0.3 * torch.tanh(cond[:, :1]).view(-1, 1, 1) if cond is not None else 0.6
    v = a * 0.05**2 + (1 - a)
    return (1 - a).sqrt() * (x - a.sqrt() * m * torch.tanh(a.sqrt() * m * x / v)) / v


def setup(kind: str, K: int, B: int = 3, seed: int = 0):
    tab = make_step_table(AC, make_timesteps(T, K), kind=kind)
    gen = torch.Generator().manual_seed(seed)
    x_T, noise = draw_noise(tab, (B, H, D), gen)
    cond = torch.randn(B, 4, generator=gen)
    target = 0.8 * torch.rand((B, H, D), generator=gen) - 0.4  # inside the clip range
    weight = torch.stack(  # each sample its own committed prefix and soft overlap
        [soft_prefix_weights(H, 2 + b, 8 + b, start=1) for b in range(B)]
    ).unsqueeze(-1)  # (B, H, 1)
    return tab, x_T, noise, cond, Inpaint(target, weight)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("K", "window", "B"), [(100, 8, 3), (16, 5, 3), (10, 10, 1), (100, 8, 1)])
def test_picard_tol_zero_equals_sequential_inpainted_sample(kind: str, K: int, window: int, B: int) -> None:
    tab, x_T, noise, cond, ip = setup(kind, K, B)
    seq = sample_sequential(mixture_denoiser, x_T, tab, noise, cond, return_trajectory=True, inpaint=ip)
    for refill, update in (("window_end", "picard"), ("x0_rollout", "picard"), ("x0_rollout", "parareal")):
        par = sample_picard(
            mixture_denoiser,
            x_T,
            tab,
            noise,
            cond,
            window=window,
            tol=0.0,
            refill=refill,
            update=update,
            inpaint=ip,
        )
        assert par.all_converged and par.iterations <= K
        torch.testing.assert_close(par.sample, seq.sample, rtol=0, atol=1e-5)
        torch.testing.assert_close(par.trajectory, seq.trajectory, rtol=0, atol=1e-5)
    plain = sample_sequential(mixture_denoiser, x_T, tab, noise, cond)
    assert (plain.sample - seq.sample).abs().max() > 0.05  # the imposition changed the sample


@pytest.mark.parametrize("kind", KINDS)
def test_window_one_is_bitwise_sequential_with_inpainting(kind: str) -> None:
    tab, x_T, noise, cond, ip = setup(kind, 20, B=2)
    seq = sample_sequential(mixture_denoiser, x_T, tab, noise, cond, return_trajectory=True, inpaint=ip)
    par = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=1, tol=0.1, inpaint=ip)
    assert torch.equal(par.sample, seq.sample) and torch.equal(par.trajectory, seq.trajectory)


@pytest.mark.parametrize("kind", KINDS)
def test_rows_with_weight_one_end_at_the_known_values(kind: str) -> None:
    """Exactly with the sequential sampler and Picard at tol 0; within the tolerance's error at tol 0.1."""
    tab, x_T, noise, cond, ip = setup(kind, 100)
    hard = ip.weight == 1  # (B, H, 1)
    assert int(hard.sum()) == 2 + 3 + 4
    want = ip.target.masked_select(hard)
    for res, atol in (
        (sample_sequential(mixture_denoiser, x_T, tab, noise, cond, inpaint=ip), 1e-6),
        (sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=8, tol=0.0, inpaint=ip), 1e-6),
        (sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=8, tol=0.1, inpaint=ip), 0.02),
    ):
        torch.testing.assert_close(res.sample.masked_select(hard), want, rtol=0, atol=atol)


@pytest.mark.parametrize("kind", KINDS)
def test_weights_zero_give_the_plain_sample_bitwise(kind: str) -> None:
    tab, x_T, noise, cond, ip = setup(kind, 30)
    free = Inpaint(ip.target, torch.zeros_like(ip.weight))
    plain = sample_sequential(mixture_denoiser, x_T, tab, noise, cond)
    assert torch.equal(
        sample_sequential(mixture_denoiser, x_T, tab, noise, cond, inpaint=free).sample, plain.sample
    )
    par = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=6, tol=0.0, inpaint=free)
    ref = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=6, tol=0.0)
    assert torch.equal(par.sample, ref.sample) and par.iterations == ref.iterations


def test_ddim_known_rows_follow_the_forward_noised_path_of_x_t() -> None:
    """Outside reference: with x̂₀ held at a, DDIM keeps ε fixed, so slot j = √ᾱ_j·a + √(1-ᾱ_j)·x_T."""
    K = 16
    tab, x_T, noise, cond, ip = setup("ddim", K)
    hard = Inpaint(ip.target, (ip.weight == 1).to(ip.weight))
    traj = sample_sequential(mixture_denoiser, x_T, tab, None, cond, return_trajectory=True, inpaint=hard)
    ts = make_timesteps(T, K)
    mask = hard.weight.bool().expand_as(x_T)
    for j in range(K):
        a = AC[ts[j]].item()
        want = math.sqrt(a) * ip.target + math.sqrt(1 - a) * x_T
        torch.testing.assert_close(traj.trajectory[j][mask], want[mask].float(), rtol=0, atol=1e-5)


def test_ddpm_known_rows_have_the_forward_marginals_at_every_level() -> None:
    """Outside reference: each slot's known rows ~ q(x_τ | a) = N(√ᾱ·a, 1-ᾱ), checked on 4,000 samples."""
    K, B = 20, 4000
    tab = make_step_table(AC, make_timesteps(T, K), kind="ddpm")
    x_T, noise = draw_noise(tab, (B, H, D), torch.Generator().manual_seed(3))
    target = torch.full((B, H, D), 0.7)
    weight = torch.zeros((B, H, 1))
    weight[:, :4] = 1.0
    res = sample_sequential(
        mixture_denoiser, x_T, tab, noise, None, return_trajectory=True, inpaint=Inpaint(target, weight)
    )
    ts = make_timesteps(T, K)
    for j in range(K):
        a = AC[ts[j]].item()
        rows = res.trajectory[j][:, :4]  # (B, 4, D)
        assert abs(rows.mean().item() - math.sqrt(a) * 0.7) < 0.02
        assert abs(rows.var().item() - (1 - a)) < 0.03 * max(1 - a, 0.05)
    assert torch.allclose(res.sample[:, :4], target[:, :4], atol=2e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_batched_picard_with_inpainting_equals_per_sample(kind: str) -> None:
    tab, x_T, noise, cond, ip = setup(kind, 50, B=3)
    both = sample_picard(
        mixture_denoiser, x_T, tab, noise, cond, window=8, tol=0.1, refill="x0_rollout", inpaint=ip
    )
    for b in range(3):
        one = sample_picard(
            mixture_denoiser,
            x_T[b : b + 1],
            tab,
            noise[:, b : b + 1],
            cond[b : b + 1],
            window=8,
            tol=0.1,
            refill="x0_rollout",
            inpaint=Inpaint(ip.target[b : b + 1], ip.weight[b : b + 1]),
        )
        torch.testing.assert_close(both.sample[b : b + 1], one.sample, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_max_iters_fallback_and_guess_keep_the_inpainted_fixed_point(kind: str) -> None:
    tab, x_T, noise, cond, ip = setup(kind, 40)
    seq = sample_sequential(mixture_denoiser, x_T, tab, noise, cond, inpaint=ip)
    capped = sample_picard(
        mixture_denoiser, x_T, tab, noise, cond, window=4, tol=0.0, max_iters=3, inpaint=ip
    )
    assert not capped.all_converged
    torch.testing.assert_close(capped.sample, seq.sample, rtol=0, atol=1e-5)
    guess = torch.randn(x_T.shape, generator=torch.Generator().manual_seed(9))
    warm = sample_picard(
        mixture_denoiser, x_T, tab, noise, cond, window=8, tol=0.0, x0_guess=guess, inpaint=ip
    )
    torch.testing.assert_close(warm.sample, seq.sample, rtol=0, atol=1e-5)


def test_inpaint_start_golden() -> None:
    tab = make_step_table(AC, make_timesteps(T, 10), kind="ddpm")
    x_T = torch.ones((1, 3, 1))
    ip = Inpaint(torch.full((1, 3, 1), 0.5), torch.tensor([[[1.0], [0.5], [0.0]]]))
    a0 = AC[90].item()
    noised = math.sqrt(a0) * 0.5 + math.sqrt(1 - a0)
    want = torch.tensor([[[noised], [0.5 * noised + 0.5], [1.0]]])
    torch.testing.assert_close(inpaint_start(tab, x_T, ip), want)


def test_soft_prefix_weights_golden() -> None:
    w = soft_prefix_weights(16, 3, 8, start=1)
    e1 = math.e - 1
    want = [0.0, 1.0, 1.0, 1.0]
    for i in range(3, 8):
        c = (8 - i) / 6
        want.append(c * math.expm1(c) / e1)
    want += [0.0] * 7
    torch.testing.assert_close(w, torch.tensor(want, dtype=torch.float32))
    assert 0 < w[4] < 1 and bool((w[4:9].diff() < 0).all())
    assert torch.equal(soft_prefix_weights(4, 2, 2), torch.tensor([1.0, 1.0, 0.0, 0.0]))
    linear = soft_prefix_weights(8, 1, 4, decay="linear")  # c = (4 - i) / 4 on rows 1-3
    torch.testing.assert_close(linear, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="decay must be"):
        soft_prefix_weights(16, 1, 3, decay="cubic")
    with pytest.raises(ValueError, match="committed <= overlap_end"):
        soft_prefix_weights(16, 5, 3)
    with pytest.raises(ValueError, match="start must be in"):
        soft_prefix_weights(16, 1, 3, start=17)


def test_prepare_inpaint_errors() -> None:
    x = torch.zeros((2, H, D))
    ok_w = torch.zeros((2, H, 1))
    with pytest.raises(ValueError, match="target must have the sample's shape"):
        prepare_inpaint(Inpaint(torch.zeros((2, H, 3)), ok_w), x)
    with pytest.raises(ValueError, match="weight must have shape"):
        prepare_inpaint(Inpaint(x, torch.zeros((2, H))), x)
    with pytest.raises(ValueError, match=r"weights must lie in \[0, 1\]"):
        prepare_inpaint(Inpaint(x, ok_w + 1.5), x)
    with pytest.raises(ValueError, match="target must be finite"):
        prepare_inpaint(Inpaint(torch.full_like(x, math.nan), ok_w), x)
    got = prepare_inpaint(Inpaint(x.double(), ok_w.double()), x)
    assert got.target.dtype == got.weight.dtype == torch.float32


@pytest.mark.parametrize("kind", KINDS)
def test_a_clipping_bound_below_one_still_ends_the_known_rows_at_their_values(kind):
    """The held-x̂₀ map's x̂₀ weight is read with a probe inside the clamp: with clip_sample_range 0.5 it
    is the step's own (DDPM: the posterior's), and known rows end where they are imposed."""
    table = make_step_table(AC, make_timesteps(T, 10), kind=kind, clip_sample=True, clip_sample_range=0.5)
    unclipped = make_step_table(AC, make_timesteps(T, 10), kind=kind, clip_sample=False)
    torch.testing.assert_close(table.rollout_coef_x0, unclipped.rollout_coef_x0, rtol=1e-6, atol=0)
    x_T, noise = draw_noise(table, (1, H, D), torch.Generator().manual_seed(0))
    weight = torch.zeros(1, H, 1)
    weight[:, :3] = 1.0
    target = torch.full((1, H, D), 0.25)
    out = sample_sequential(mixture_denoiser, x_T, table, noise, None, inpaint=Inpaint(target, weight)).sample
    torch.testing.assert_close(out[0, :3], target[0, :3], rtol=0, atol=1e-6)
