"""The Parareal update's linear coarse model (`diffusion.coarse`, ``sampler.coarse="linear"``): the
measured Jacobian, the fixed point (tol = 0 parity), its consistency with the held-x̂₀ model, and the
policy's measurement on its first plan."""

from __future__ import annotations

import math

import pytest
import torch
from test_picard import AC, KINDS, T, mixture_denoiser, sequential, setup
from torch.func import jacrev

from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.diffusion.coarse import linear_slopes, x0_jacobian
from parapolicy.policy.diffusion.picard import sample_picard
from parapolicy.policy.diffusion.schedules import make_step_table, make_timesteps
from parapolicy.policy.diffusion.sequential import draw_noise
from parapolicy.policy.diffusion.step import predict_x0


def affine_denoiser(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    """ε̂ = 0.5·x + c: x̂₀ is affine in x, so every step is (no clipping)."""
    c = 0.0 if cond is None else cond.mean(dim=1).view(-1, 1, 1)
    return 0.5 * x + 0.3 * c


def measured(tab, x_T, noise, cond, den=mixture_denoiser):
    return x0_jacobian(den, tab, sequential(tab, x_T, noise, cond, den).trajectory, cond)


def test_the_measured_jacobian_is_the_denoisers():
    tab, x_T, noise, cond = setup("ddpm", 20, B=2, clip_sample=False)
    J = x0_jacobian(affine_denoiser, tab, sequential(tab, x_T, noise, cond, affine_denoiser).trajectory, cond)
    assert J.shape == (20, 32, 32)
    sa = tab.column("sqrt_alpha_bar").double()
    s1a = tab.column("sqrt_one_minus_alpha_bar").double()
    expected = ((1 - 0.5 * s1a) / sa)[:, None, None] * torch.eye(32, dtype=torch.float64)  # (K, 32, 32)
    torch.testing.assert_close(J.double(), expected, rtol=0, atol=2e-2)
    # a non-symmetric linear ε = A x: J[k] = (I - s1a A) / sa, rows the output, columns the input
    A = torch.randn(32, 32, generator=torch.Generator().manual_seed(3)) * 0.1  # (32 out, 32 in)

    def linear(x, t, cond):
        return (x.reshape(x.shape[0], -1) @ A.T).view_as(x)

    J = x0_jacobian(linear, tab, sequential(tab, x_T, noise, cond, linear).trajectory, cond).double()
    expected = (torch.eye(32, dtype=torch.float64) - s1a[:, None, None] * A.double()) / sa[:, None, None]
    torch.testing.assert_close(J, expected, rtol=0, atol=2e-2)
    assert float((J.transpose(1, 2) - expected).abs().max()) > 1.0  # its transpose is not
    # a nonlinear denoiser: autograd's Jacobian at the same points, averaged over the two samples
    tab, x_T, noise, cond = setup("ddpm", 10, B=2)
    X = sequential(tab, x_T, noise, cond).trajectory  # (K+1, 2, 16, 2)
    ref = torch.zeros(10, 32, 32)
    for j in range(10):
        t = tab.timesteps[j : j + 1]
        for s in range(2):

            def x0_of(v, j=j, t=t, s=s):
                x = v.view(1, 16, 2)
                return predict_x0(
                    tab, torch.tensor([j]), x, mixture_denoiser(x, t, cond[s : s + 1])
                ).flatten()

            ref[j] += jacrev(x0_of)(X[j, s].reshape(-1)) / 2
    J = x0_jacobian(mixture_denoiser, tab, X, cond)
    # forward differences: the error is eps/2 times the curvature, largest at the sharp last steps
    assert float((J - ref).abs().max()) < 0.1 * float(ref.abs().max())
    assert float((J - ref).abs().mean()) < 1e-3


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("K", "window"), [(100, 8), (100, 32), (16, 5)])
def test_tol_zero_with_the_linear_coarse_equals_sequential(kind: str, K: int, window: int) -> None:
    tab, x_T, noise, cond = setup(kind, K)
    seq = sequential(tab, x_T, noise, cond)
    J = measured(tab, x_T, noise, cond)
    par = sample_picard(
        mixture_denoiser, x_T, tab, noise, cond, window=window, tol=0.0, update="parareal", coarse_jacobian=J
    )
    assert par.all_converged
    torch.testing.assert_close(par.sample, seq.sample, rtol=0, atol=1e-5)
    torch.testing.assert_close(par.trajectory, seq.trajectory, rtol=0, atol=1e-5)


def test_a_zero_jacobian_is_the_held_x0_model():
    tab, x_T, noise, cond = setup("ddpm", 100)
    kw = {"window": 16, "tol": 0.1, "update": "parareal"}
    held = sample_picard(mixture_denoiser, x_T, tab, noise, cond, **kw)
    zero = sample_picard(
        mixture_denoiser, x_T, tab, noise, cond, coarse_jacobian=torch.zeros(100, 32, 32), **kw
    )
    assert zero.rows_per_call == held.rows_per_call
    torch.testing.assert_close(zero.sample, held.sample, rtol=0, atol=1e-5)


def test_an_exact_linear_model_slides_whole_windows():
    """With x̂₀ affine in x the linear model is the step itself: a window's values are exact after one
    evaluation, so each window costs about two iterations instead of many."""
    K, p = 100, 10
    tab = make_step_table(AC, make_timesteps(T, K), kind="ddpm", clip_sample=False)
    gen = torch.Generator().manual_seed(0)
    x_T, noise = draw_noise(tab, (1, 16, 2), gen)
    cond = torch.randn(1, 4, generator=gen)
    J = measured(tab, x_T, noise, cond, affine_denoiser)
    kw = {"window": p, "tol": 1e-3, "update": "parareal"}
    held = sample_picard(affine_denoiser, x_T, tab, noise, cond, **kw)
    linear = sample_picard(affine_denoiser, x_T, tab, noise, cond, coarse_jacobian=J, **kw)
    assert linear.iterations <= 2 * math.ceil(K / p) + 1 < held.iterations
    torch.testing.assert_close(
        linear.sample, sequential(tab, x_T, noise, cond, affine_denoiser).sample, atol=1e-4, rtol=0
    )


def test_batched_linear_coarse_equals_per_sample():
    tab, x_T, noise, cond = setup("ddpm", 100, B=3)
    J = measured(tab, x_T, noise, cond)
    kw = {"window": 16, "tol": 0.1, "update": "parareal", "coarse_jacobian": J}
    batched = sample_picard(mixture_denoiser, x_T, tab, noise, cond, **kw)
    for s in range(3):
        one = sample_picard(mixture_denoiser, x_T[s : s + 1], tab, noise[:, s : s + 1], cond[s : s + 1], **kw)
        torch.testing.assert_close(batched.sample[s : s + 1], one.sample, rtol=0, atol=1e-6)


def test_bad_coarse_jacobians_are_refused():
    tab, x_T, noise, cond = setup("ddpm", 20)
    J = torch.zeros(20, 32, 32)
    with pytest.raises(ValueError, match="needs update='parareal'"):
        sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=8, tol=0.1, coarse_jacobian=J)
    with pytest.raises(ValueError, match=r"jacobian must be \(K=20, D, D\)"):
        linear_slopes(tab, torch.zeros(19, 32, 32))
    with pytest.raises(ValueError, match="non-finite"):
        linear_slopes(tab, torch.full((20, 32, 32), float("nan")))
    with pytest.raises(ValueError, match=r"trajectory must be \(K\+1=21"):
        x0_jacobian(mixture_denoiser, tab, torch.zeros(20, 1, 16, 2), cond[:1])


def test_the_linear_coarse_needs_the_parareal_update():
    assert SamplerConfig(algorithm="picard", update="parareal", coarse="linear").coarse == "linear"
    for kw in ({}, {"algorithm": "picard"}):
        with pytest.raises(ValueError, match="sampler.coarse='linear' is Parareal's coarse model"):
            SamplerConfig(coarse="linear", **kw)
    with pytest.raises(ValueError, match="sampler.coarse"):
        SamplerConfig(coarse="cubic")


def test_the_policy_measures_the_model_on_its_first_plan_and_keeps_it(tiny_policy):
    policy = tiny_policy
    policy.set_sampler(
        SamplerConfig(algorithm="picard", window=8, tol=1e-6, update="parareal", coarse="linear")
    )
    K = policy.table.num_steps
    gen = torch.Generator().manual_seed(1)
    obs = {"obs": torch.rand(2, 2, 20, generator=gen) * 400}
    noise = draw_noise(policy.table, (2, 16, 2), gen)
    assert policy.coarse_jacobian is None
    first = policy.predict_action_chunk(obs, noise=noise)
    J = policy.coarse_jacobian
    assert J is not None and J.shape == (K, 32, 32) and bool(J.abs().sum() > 0)
    again = policy.predict_action_chunk(obs, noise=noise)
    assert policy.coarse_jacobian is J  # kept, not measured again
    policy.set_sampler(SamplerConfig())
    assert policy.coarse_jacobian is None  # another sampler: cleared
    seq = policy.predict_action_chunk(obs, noise=noise)
    torch.testing.assert_close(first.plan, seq.plan, rtol=0, atol=1e-3)
    torch.testing.assert_close(again.plan, seq.plan, rtol=0, atol=1e-3)


def test_one_window_linear_carry_is_the_recurrence() -> None:
    """`LinearCarry.window` (one sample) and `.carry` (the batched grid) both give
    c_i = M_{b+i}·(c_{i-1} + change of row i-1), c_0 = 0."""
    from parapolicy.policy.diffusion.parareal import LinearCarry

    tab, x_T, noise, cond = setup("ddpm", 100, B=1)
    J = measured(tab, x_T, noise, cond)
    slopes = linear_slopes(tab, J).double()  # (K, 32, 32)
    carry = LinearCarry(linear_slopes(tab, J), p=24)
    changes = torch.randn(24, 32, generator=torch.Generator().manual_seed(0))
    for b, R in ((0, 24), (40, 24), (88, 12), (99, 1)):
        c, want = torch.zeros(32, dtype=torch.float64), [torch.zeros(32, dtype=torch.float64)]
        for i in range(1, R):
            c = slopes[b + i] @ (c + changes[i - 1].double())
            want.append(c)
        want = torch.stack(want)  # (R, 32)
        torch.testing.assert_close(carry.window(b, changes[:R]).double(), want, rtol=1e-5, atol=1e-6)
        grid = torch.zeros(1, 25, 32)
        grid[0, 1 : R + 1] = changes[:R]
        got = carry.carry(torch.tensor([b]), grid, R)[0, :R]
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_the_linear_carry_is_kept_while_the_jacobian_is_unchanged() -> None:
    from parapolicy.policy.diffusion.parareal import LinearCarry

    tab, x_T, noise, cond = setup("ddpm", 20, B=1)
    J = measured(tab, x_T, noise, cond)
    first = LinearCarry.for_jacobian(tab, J, 8)
    assert LinearCarry.for_jacobian(tab, J, 8) is first
    assert LinearCarry.for_jacobian(tab, J, 4) is not first  # another window
    J.mul_(0.5)  # changed in place: built again, from the new values
    halved = LinearCarry.for_jacobian(tab, J, 8)
    assert halved is not first and not torch.equal(halved.M, first.M)
    copy = J.clone()  # another tensor, equal values: built again
    assert LinearCarry.for_jacobian(tab, copy, 8) is not halved
    torch.testing.assert_close(LinearCarry.for_jacobian(tab, copy, 8).M, halved.M, rtol=0, atol=0)
