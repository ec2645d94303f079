"""The Picard refill's x̂₀-held roll-out in closed form (`diffusion.rollout`) and the convergence
test's norm thresholds (`picard.change_norm_thresholds`): each against the plain step-by-step form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_picard import KINDS, setup

from parapolicy.policy.diffusion.picard import change_norm_thresholds
from parapolicy.policy.diffusion.rollout import HeldRollout
from parapolicy.policy.diffusion.step import held_x0_affine


def stepped(tab, e: int, M: int, x_end: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor | None):
    """(M, H, D): slots e+1 .. e+M, one held-x̂₀ step after the other, in float64."""
    xs, x = [], x_end.double()
    for j in range(e, e + M):
        z = None if noise is None else noise[j]
        a, c = held_x0_affine(tab, j, x0, z)
        x = a.double() * x + c.double()
        xs.append(x[0])
    return torch.stack(xs)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("K", "e", "M"), [(100, 0, 8), (100, 37, 24), (100, 90, 10), (10, 0, 10), (10, 6, 4)]
)
def test_closed_form_roll_out_is_the_stepped_one(kind: str, K: int, e: int, M: int) -> None:
    tab, x_T, noise, _ = setup(kind, K, B=1)
    gen = torch.Generator().manual_seed(1)
    x_end = torch.randn(1, 16, 2, generator=gen)
    x0 = 0.8 * torch.randn(1, 16, 2, generator=gen).clamp(-1, 1)
    z = noise[:, 0] if tab.is_stochastic else None  # (K, H, D)
    expected = stepped(tab, e, M, x_end, x0, z)
    held = HeldRollout(tab, trailing=2)
    rows, gain, weights = held.run(e, M)
    _, c = held_x0_affine(tab, rows, x0, None if z is None else z[e : e + M])  # (M, H, D)
    got = HeldRollout.apply(gain, weights, x_end, c.view(1, M, -1)).view(M, 16, 2)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    if e + M == K and kind != "ddpm":  # the last step lands on clean data: slope 0, the held x̂₀ itself
        torch.testing.assert_close(got[-1], x0[0], rtol=0, atol=1e-6)
    # the batched form from several starts at once gives each start's own weights
    g2, w2 = held.weights(torch.tensor([e, max(e - 3, 0)]), M)
    torch.testing.assert_close(g2[:1], gain, rtol=0, atol=0)
    torch.testing.assert_close(w2[:1], weights, rtol=0, atol=0)


def test_roll_out_weights_are_lower_triangular_products_of_slopes() -> None:
    tab, *_ = setup("ddpm", 20, B=1)
    gain, weights = HeldRollout(tab, trailing=2).weights(torch.tensor([5]), 4)
    a = tab.rollout_coef_x.double()
    for k in range(4):
        assert float(gain[0, k, 0]) == pytest.approx(float(a[5 : 6 + k].prod()), rel=1e-6)
        for j in range(4):
            want = float(a[6 + j : 6 + k].prod()) if j <= k else 0.0  # Π_{m=e+j+1..e+k} a_m
            assert float(weights[0, k, j]) == pytest.approx(want, rel=1e-6, abs=0.0)


@pytest.mark.parametrize(("tol", "floor"), [(0.1, 0.0), (0.01, 0.0), (0.1, 0.05), (0.0, 0.0)])
def test_norm_thresholds_are_the_rms_bound(tol: float, floor: float) -> None:
    """‖change‖ <= thr[j] exactly when the RMS change is within max(tol·σ_j, floor)."""
    tab, *_ = setup("ddpm", 100, B=1)
    n = 32
    thr, scale = change_norm_thresholds(tab, tol, floor, n)
    sigma = np.sqrt(tab.tol_variance.double().numpy())  # (K,)
    bound = np.maximum(tol * sigma, floor)  # (K,) allowed RMS change
    rng = np.random.default_rng(0)
    for j in (1, 50, 99):
        direction = rng.standard_normal(n)
        direction /= np.sqrt(np.mean(direction**2))  # RMS 1
        for factor, passes in ((0.999, True), (1.001, False)):
            change = factor * bound[j] * direction
            assert (np.linalg.norm(change) <= thr[j]) == (passes or bound[j] == 0.0)
        assert np.linalg.norm(sigma[j] * direction) == pytest.approx(scale[j], rel=1e-12)  # RMS σ_j
    assert thr[100] == pytest.approx(np.sqrt(n) * max(tol, floor))  # slot K: σ² taken as 1
    if tol == 0.0 and floor == 0.0:
        assert not thr.any()  # only an unchanged slot passes


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("B", [1, 2])
def test_roll_out_from_the_default_guess_is_the_roll_out_from_zero(kind: str, B: int) -> None:
    """``x0=None`` (the first window's default guess) fills the same slots, bit for bit, as an explicit
    x̂₀ of 0: one sample of a deterministic rule takes the shortcut x_{e+1+k} = A_k·x_e."""
    from parapolicy.policy.diffusion.picard import _Trajectory

    tab, x_T, noise, _ = setup(kind, 20, B=B)
    filled = []
    for guess in (None, torch.zeros_like(x_T)):
        traj = _Trajectory(tab, x_T, noise, None, None, max_rows=8 * B, norm_dtype=torch.float32)
        traj.roll_out(list(range(B)), [0] * B, [8] * B, x_T, guess)
        filled.append(traj.X.clone())
    assert torch.equal(filled[0], filled[1])
    assert not torch.equal(filled[0][1:9], x_T.expand(8, *x_T.shape))  # the slots were rolled out
