"""Parity and convergence of the Picard (ParaDiGMS) sampler against the sequential sampler."""

from __future__ import annotations

import math

import pytest
import torch

from parapolicy.policy.diffusion.picard import sample_picard
from parapolicy.policy.diffusion.schedules import (
    StepTable,
    make_alphas_cumprod,
    make_step_table,
    make_timesteps,
)
from parapolicy.policy.diffusion.sequential import draw_noise, sample_sequential
from parapolicy.policy.diffusion.step import model_out_from_x0, predict_x0, step

T = 100
AC = make_alphas_cumprod("squaredcos_cap_v2", T)
KINDS = ["ddpm", "ddim", "dpmsolver++"]


def mixture_denoiser(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    """Exact ε for per-element data x_0 ∈ {-m, +m} (+ N(0, 0.05²)), m set by the conditioning (nonlinear)."""
    a = AC.to(x.dtype)[t].view(-1, 1, 1)
    m = 0.6 + 0.3 * torch.tanh(cond[:, :1]).view(-1, 1, 1) if cond is not None else 0.6
    v = a * 0.05**2 + (1 - a)
    return (1 - a).sqrt() * (x - a.sqrt() * m * torch.tanh(a.sqrt() * m * x / v)) / v


def linear_denoiser(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    c = 0.0 if cond is None else cond.mean(dim=1).view(-1, 1, 1)
    return 0.5 * x + 0.3 * c + 0.002 * t.view(-1, 1, 1).to(x.dtype)


def setup(kind: str, K: int, B: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32, **kw):
    tab = make_step_table(AC, make_timesteps(T, K), kind=kind, dtype=dtype, **kw)
    gen = torch.Generator().manual_seed(seed)
    x_T, noise = draw_noise(tab, (B, 16, 2), gen, dtype=dtype)
    cond = torch.randn(B, 4, generator=gen, dtype=dtype)
    return tab, x_T, noise, cond


def sequential(tab: StepTable, x_T, noise, cond, den=mixture_denoiser):
    return sample_sequential(den, x_T, tab, noise, cond, return_trajectory=True)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("K", "window"), [(100, 8), (100, 100), (16, 5), (10, 10)])
def test_tol_zero_equals_sequential(kind: str, K: int, window: int) -> None:
    tab, x_T, noise, cond = setup(kind, K)
    seq = sequential(tab, x_T, noise, cond)
    par = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=window, tol=0.0)
    assert par.iterations <= K and par.all_converged
    torch.testing.assert_close(par.sample, seq.sample, rtol=0, atol=1e-5)
    torch.testing.assert_close(par.trajectory, seq.trajectory, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_window_one_is_bitwise_sequential(kind: str) -> None:
    tab, x_T, noise, cond = setup(kind, 20, B=4)
    seq = sequential(tab, x_T, noise, cond)
    for tol in (0.0, 0.1):
        par = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=1, tol=tol)
        assert torch.equal(par.sample, seq.sample) and torch.equal(par.trajectory, seq.trajectory)
        assert par.iterations == 20 and par.rows_evaluated == 20 * 4 and par.all_converged


@pytest.mark.parametrize("kind", KINDS)
def test_every_tolerance_converges_within_k_iterations(kind: str) -> None:
    K = 50
    tab, x_T, noise, cond = setup(kind, K, B=2)
    seq = sequential(tab, x_T, noise, cond)
    for window in (2, 8, K):
        for tol in (0.0, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0):
            par = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=window, tol=tol)
            assert par.all_converged and 1 <= par.iterations <= K
            assert par.model_calls == par.sequential_passes == par.iterations == len(par.rows_per_call)
            assert par.rows_evaluated == sum(par.rows_per_call) <= par.iterations * window * 2
            assert bool(torch.isfinite(par.sample).all()) and bool(torch.isfinite(par.final_residual).all())
            assert float(par.final_residual.max()) <= tol + 1e-6
            if tol <= 1e-3:
                torch.testing.assert_close(par.sample, seq.sample, rtol=0, atol=2e-3)


def test_tolerance_saves_iterations_on_a_long_ddpm_schedule() -> None:
    tab, x_T, noise, cond = setup("ddpm", 100, B=2)
    seq = sequential(tab, x_T, noise, cond)
    par = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=16, tol=0.1, refill="window_end")
    assert par.iterations < 50  # the reference's toy needs ~26 for p = 16
    assert float((par.sample - seq.sample).abs().max()) < 0.02


@pytest.mark.parametrize("kind", KINDS)
def test_float64_and_other_table_options(kind: str) -> None:
    tab, x_T, noise, cond = setup(
        kind, 12, dtype=torch.float64, set_alpha_to_one=False, prediction_type="sample"
    )
    seq = sequential(tab, x_T, noise, cond, den=linear_denoiser)
    par = sample_picard(linear_denoiser, x_T, tab, noise, cond, window=4, tol=0.0)
    torch.testing.assert_close(par.sample, seq.sample, rtol=0, atol=1e-12)


def test_uneven_timesteps_parity() -> None:
    tab = make_step_table(AC, [99, 97, 80, 79, 40, 20, 5, 1, 0], kind="dpmsolver++")
    x_T, noise = draw_noise(tab, (2, 16, 2), torch.Generator().manual_seed(4))
    seq = sample_sequential(mixture_denoiser, x_T, tab, noise, None)
    par = sample_picard(mixture_denoiser, x_T, tab, noise, None, window=3, tol=0.0)
    torch.testing.assert_close(par.sample, seq.sample, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_batched_equals_per_sample(kind: str) -> None:
    tab, x_T, noise, cond = setup(kind, 40, B=4, seed=1)
    batched = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=8, tol=0.05)
    singles = [
        sample_picard(
            mixture_denoiser, x_T[s : s + 1], tab, noise[:, s : s + 1], cond[s : s + 1], window=8, tol=0.05
        )
        for s in range(4)
    ]
    for s, one in enumerate(singles):
        assert torch.equal(batched.sample[s], one.sample[0])
        assert torch.equal(batched.final_residual[s], one.final_residual[0])
    assert batched.iterations == max(o.iterations for o in singles)
    assert batched.rows_evaluated == sum(o.rows_evaluated for o in singles)


def test_per_sample_convergence_drops_finished_samples() -> None:
    K = 30
    tab, x_T, noise, cond = setup("ddpm", K, B=2)
    x_T[0], noise[:, 0] = 0.0, 0.0  # sample 0 sits on a fixed point: the trajectory is exactly 0
    res = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=K, tol=0.01)
    assert res.all_converged and res.iterations > 1
    assert res.rows_per_call[0] == 2 * K and all(r <= K for r in res.rows_per_call[1:])
    assert torch.equal(res.sample[0], torch.zeros(16, 2))
    alone = sample_picard(mixture_denoiser, x_T[1:], tab, noise[:, 1:], cond[1:], window=K, tol=0.01)
    assert torch.equal(res.sample[1], alone.sample[0]) and res.iterations == alone.iterations


@pytest.mark.parametrize("kind", KINDS)
def test_max_iters_finish_sequential_is_exact(kind: str) -> None:
    K = 30
    tab, x_T, noise, cond = setup(kind, K)
    seq = sequential(tab, x_T, noise, cond)
    for cap in (0, 3):
        res = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=4, tol=0.0, max_iters=cap)
        assert res.iterations == cap and not res.all_converged
        assert res.model_calls == res.sequential_passes == len(res.rows_per_call) > cap
        assert torch.equal(res.sample, seq.sample)  # trusted prefix + sequential steps: bitwise
    loose = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=4, tol=1e-3, max_iters=3)
    torch.testing.assert_close(loose.sample, seq.sample, rtol=0, atol=2e-3)


def test_max_iters_return_iterate() -> None:
    K = 30
    tab, x_T, noise, cond = setup("ddpm", K)
    full = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=4, tol=0.0)
    capped = sample_picard(
        mixture_denoiser, x_T, tab, noise, cond, window=4, tol=0.0, max_iters=3, on_max_iters="return_iterate"
    )
    assert capped.iterations == capped.model_calls == 3 and not bool(capped.converged.any())
    assert torch.equal(capped.sample, capped.trajectory[K])
    assert not torch.allclose(capped.sample, full.sample, atol=1e-3)
    generous = sample_picard(
        mixture_denoiser, x_T, tab, noise, cond, window=4, tol=0.0, max_iters=K, on_max_iters="return_iterate"
    )
    assert generous.all_converged and torch.equal(generous.sample, full.sample)


@pytest.mark.parametrize("kind", KINDS)
def test_warm_start_from_the_fixed_point(kind: str) -> None:
    K = 24
    tab, x_T, noise, cond = setup(kind, K)
    seq = sequential(tab, x_T, noise, cond)
    for window, expected_iters in ((K, 1), (8, 3)):
        res = sample_picard(
            mixture_denoiser, x_T, tab, noise, cond, window=window, tol=0.0, init=seq.trajectory
        )
        assert res.iterations == expected_iters and res.all_converged
        assert torch.equal(res.sample, seq.sample)


@pytest.mark.parametrize("kind", KINDS)
def test_warm_start_guess_changes_iterations_not_the_fixed_point(kind: str) -> None:
    K = 40
    tab, x_T, noise, cond = setup(kind, K, seed=2)
    seq = sequential(tab, x_T, noise, cond)
    gen = torch.Generator().manual_seed(3)
    perturbed = seq.trajectory + 1e-4 * torch.randn(seq.trajectory.shape, generator=gen)
    shifted = torch.cat([seq.trajectory[:, :, 8:], seq.trajectory[:, :, -1:].expand(-1, -1, 8, -1)], dim=2)
    garbage = torch.full_like(seq.trajectory, 1e3)  # slot 0 of init is always replaced by x_T
    cold0 = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=8, tol=0.0, refill="window_end")
    for guess in (perturbed, shifted, garbage):
        res = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=8, tol=0.0, init=guess)
        assert res.all_converged and res.iterations <= K
        torch.testing.assert_close(res.sample, seq.sample, rtol=0, atol=1e-5)
    warm0 = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=8, tol=0.0, init=perturbed)
    assert warm0.iterations <= cold0.iterations
    cold = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=8, tol=1e-2, refill="window_end")
    warm = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=8, tol=1e-2, init=perturbed)
    assert warm.iterations < cold.iterations
    torch.testing.assert_close(warm.sample, seq.sample, rtol=0, atol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_no_nan_at_the_end_of_the_schedule(kind: str) -> None:
    """σ = 0 at the final step(s) and exactly-zero changes must neither divide by zero nor compare NaN."""
    for K in (2, 10, 100):
        tab, x_T, noise, cond = setup(kind, K, B=2)
        x_T[0], noise[:, 0] = 0.0, 0.0  # exactly unchanged slots (0/0 in a ratio-based test)
        for tol, floor in ((0.0, 0.0), (0.1, 0.0), (1.0, 1e-3)):
            res = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=K, tol=tol, abs_floor=floor)
            assert res.all_converged and res.iterations <= K
            assert bool(torch.isfinite(res.sample).all()) and bool(torch.isfinite(res.final_residual).all())


def test_abs_floor() -> None:
    tab, x_T, noise, cond = setup("ddpm", 50)
    base = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=10, tol=1e-3)
    floored = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=10, tol=1e-3, abs_floor=1e-2)
    assert floored.iterations <= base.iterations
    anything = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=10, tol=0.0, abs_floor=1e6)
    assert anything.iterations == 5  # every slot accepted: the window slides by p each iteration


def test_nan_model_output_is_never_accepted() -> None:
    def broken(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        out = mixture_denoiser(x, t, cond)
        return torch.where((t < 50).view(-1, 1, 1), torch.full_like(out, math.nan), out)

    tab, x_T, noise, cond = setup("ddpm", 100, B=1)
    res = sample_picard(broken, x_T, tab, noise, cond, window=100, tol=10.0)
    assert res.iterations <= 100
    assert res.iterations >= 50  # the NaN slots slide one step per iteration
    cut = sample_picard(
        broken, x_T, tab, noise, cond, window=100, tol=10.0, max_iters=1, on_max_iters="return_iterate"
    )
    assert math.isnan(float(cut.final_residual[0])) and not cut.all_converged  # NaN, not the largest finite


def test_input_validation() -> None:
    tab, x_T, noise, cond = setup("ddpm", 10)
    with pytest.raises(ValueError, match="window must be >= 1, got 0"):
        sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=0, tol=0.1)
    with pytest.raises(ValueError, match="tol and abs_floor must be finite and >= 0, got -1.0"):
        sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=4, tol=-1.0)
    with pytest.raises(ValueError, match="init must have shape \\(11, 3, 16, 2\\)"):
        sample_picard(
            mixture_denoiser, x_T, tab, noise, cond, window=4, tol=0.1, init=torch.zeros(10, 3, 16, 2)
        )
    with pytest.raises(ValueError, match="on_max_iters must be one of .*, got 'hold'"):
        sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=4, tol=0.1, on_max_iters="hold")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_iters must be >= 0"):
        sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=4, tol=0.1, max_iters=-1)
    with pytest.raises(ValueError, match="refill must be one of"):  # "none" is the internal state of init=
        sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=4, tol=0.1, refill="none")  # type: ignore[arg-type]


def test_a_module_denoiser_with_gradients_on_samples_as_the_sequential_loop() -> None:
    """An nn.Module's parameters require grad: the sampler's norms must not take their autograd graph."""
    tab, x_T, noise, cond = setup("ddpm", 10)
    torch.manual_seed(0)
    layer = torch.nn.Linear(2, 2)
    den = lambda x, t, c: layer(x)  # noqa: E731
    seq = sample_sequential(den, x_T, tab, noise, cond).sample
    par = sample_picard(den, x_T, tab, noise, cond, window=4, tol=0.0).sample
    assert par.requires_grad and torch.equal(par.detach(), seq.detach())


def naive_picard(
    den,
    x_T,
    tab: StepTable,
    noise,
    cond,
    window: int,
    tol: float,
    refill: str = "window_end",
    max_iters: int = 10**9,
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """ParaDiGMS' loop for one sample written the plain way: X[b] + cumsum(drift + σz), one Python step
    per window slot, with this package's tolerance-variance convention. ``refill``: the slots a slide
    exposes get X[e] (``window_end``, ParaDiGMS) or the roll-out from X[e] with the window's last x̂₀
    held (``x0_rollout``, whose first window is rolled out from x̂₀ = 0). Returns the final sample
    (H, D), the iterations and the whole trajectory (K + 1, 1, H, D) after the last iteration run."""
    K = tab.num_steps
    X = [x_T.clone() for _ in range(K + 1)]  # slot j: (1, H, D)

    def roll_out(first: int, last: int, x0: torch.Tensor) -> None:  # slots first+1 .. last from X[first]
        for j in range(first, last):
            X[j + 1] = step(tab, j, X[j], model_out_from_x0(tab, j, X[j], x0), noise[j]).prev_sample

    if refill == "x0_rollout":
        roll_out(0, min(window, K), torch.zeros_like(x_T))
    b, iterations = 0, 0
    while b < K and iterations < max_iters:
        e = min(b + window, K)
        idx = torch.arange(b, e)
        xs = torch.cat(X[b:e])  # (L, H, D)
        out = den(xs, tab.timesteps[idx], cond.expand(e - b, -1))
        mu = step(tab, idx, xs, out, None).prev_sample  # noise-free update
        drift = mu - xs + tab.sigma[idx].view(-1, 1, 1) * noise[b:e, 0]
        new = X[b] + drift.cumsum(0)  # new[i] -> slot b+1+i
        first_bad = e - b  # sentinel
        for i in range(e - b):
            j = b + 1 + i
            if j < K and float((new[i] - X[j][0]).square().mean()) > tol**2 * float(tab.tol_variance[j]):
                first_bad = i
                break
        for i in range(e - b):
            X[b + 1 + i] = new[i : i + 1]
        b_new = b + min(first_bad + 1, window)
        if refill == "x0_rollout":
            roll_out(e, min(b_new + window, K), predict_x0(tab, e - 1, xs[-1:], out[-1:]))
        else:
            for j in range(e + 1, min(b_new + window, K) + 1):
                X[j] = X[e].clone()
        b, iterations = b_new, iterations + 1
    return X[K][0], iterations, torch.stack(X)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_matches_a_naive_reference_loop(kind: str) -> None:
    tab, x_T, noise, cond = setup(kind, 40, B=1, seed=5, dtype=torch.float64)
    for window in (3, 8):
        for tol in (1e-3, 1e-2, 0.1):
            ref, ref_iters, _ = naive_picard(mixture_denoiser, x_T, tab, noise, cond, window, tol)
            got = sample_picard(
                mixture_denoiser, x_T, tab, noise, cond, window=window, tol=tol, refill="window_end"
            )
            assert got.iterations == ref_iters
            torch.testing.assert_close(got.sample[0], ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("refill", ["window_end", "x0_rollout"])
@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_the_slots_a_slide_exposes_are_refilled_as_the_naive_loop(refill: str, iterations: int) -> None:
    """The whole iterate after a few iterations, not only the fixed point: which slots are refilled and
    with what (a refill one slot short or one slot early keeps the fixed point but not this)."""
    tab, x_T, noise, cond = setup("ddpm", 40, B=1, seed=5, dtype=torch.float64)
    cap = {"max_iters": iterations, "on_max_iters": "return_iterate"}
    got = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=8, tol=0.3, refill=refill, **cap)
    _, _, ref = naive_picard(mixture_denoiser, x_T, tab, noise, cond, 8, 0.3, refill, max_iters=iterations)
    assert got.iterations == iterations
    torch.testing.assert_close(got.trajectory, ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize(("scale", "stops_at_slot"), [(1.05, True), (0.95, False)])
def test_change_is_normalised_by_the_variance_of_the_step_leaving_the_slot(
    scale: float, stops_at_slot: bool
) -> None:
    """Perturb slot j of an exact warm start by RMS δ = scale·tol·√tol_variance[j]: the window must stop
    at slot j exactly when δ exceeds the tolerance (neighbouring variances differ by > 15 %)."""
    K, j, tol = 20, 10, 0.1
    tab, x_T, noise, cond = setup("ddpm", K)
    seq = sequential(tab, x_T, noise, cond)
    init = seq.trajectory.clone()
    init[j] += scale * tol * float(tab.tol_variance[j]) ** 0.5
    res = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=K, tol=tol, max_iters=1, init=init)
    b = K - (res.model_calls - 1)  # trusted slot after one iteration, from the fallback's step count
    assert (b == j) == stops_at_slot and b >= j
    if stops_at_slot:
        assert torch.equal(res.sample, seq.sample)  # slot j was rebuilt exactly, the rest sequentially


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_parity(kind: str) -> None:
    tab, x_T, noise, cond = setup(kind, 50, B=4)
    dev = torch.device("cuda")
    tab_d, x_d, n_d, c_d = tab.to(dev), x_T.to(dev), noise.to(dev), cond.to(dev)
    seq = sample_sequential(mixture_denoiser, x_d, tab_d, n_d, c_d)
    par = sample_picard(mixture_denoiser, x_d, tab_d, n_d, c_d, window=16, tol=0.0)
    assert par.all_converged and par.iterations <= 50 and par.sample.device.type == "cuda"
    torch.testing.assert_close(par.sample, seq.sample, rtol=0, atol=1e-5)
    cpu = sample_sequential(mixture_denoiser, x_T, tab, noise, cond)
    torch.testing.assert_close(seq.sample.cpu(), cpu.sample, rtol=0, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("K", "window"), [(100, 8), (16, 5)])
def test_x0_rollout_refill_keeps_the_fixed_point(kind: str, K: int, window: int) -> None:
    tab, x_T, noise, cond = setup(kind, K)
    seq = sequential(tab, x_T, noise, cond)
    par = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=window, tol=0.0, refill="x0_rollout")
    assert par.iterations <= K and par.all_converged
    torch.testing.assert_close(par.sample, seq.sample, rtol=0, atol=1e-5)
    for tol in (0.01, 0.1, 1.0):
        r = sample_picard(
            mixture_denoiser, x_T, tab, noise, cond, window=window, tol=tol, refill="x0_rollout"
        )
        assert r.iterations <= K and r.all_converged and torch.isfinite(r.sample).all()


@pytest.mark.parametrize("kind", KINDS)
def test_x0_rollout_refill_batched_equals_per_sample(kind: str) -> None:
    tab, x_T, noise, cond = setup(kind, 40, B=4, seed=1)
    kw = {"window": 8, "tol": 0.05, "refill": "x0_rollout"}
    batched = sample_picard(mixture_denoiser, x_T, tab, noise, cond, **kw)
    for s in range(4):
        one = sample_picard(mixture_denoiser, x_T[s : s + 1], tab, noise[:, s : s + 1], cond[s : s + 1], **kw)
        torch.testing.assert_close(batched.sample[s], one.sample[0], rtol=0, atol=1e-6)


def test_x0_rollout_refill_saves_iterations() -> None:
    tab, x_T, noise, cond = setup("ddpm", 100, B=2, seed=3)
    plain = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=8, tol=0.1, refill="window_end")
    rolled = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=8, tol=0.1, refill="x0_rollout")
    assert rolled.iterations < plain.iterations
    with pytest.raises(ValueError, match="refill"):
        sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=8, tol=0.1, refill="zeros")


@pytest.mark.parametrize("kind", KINDS)
def test_x0_guess_changes_iterations_not_the_fixed_point(kind: str) -> None:
    K = 60
    tab, x_T, noise, cond = setup(kind, K, B=2, seed=4)
    seq = sequential(tab, x_T, noise, cond)
    kw = {"window": 8, "refill": "x0_rollout"}
    for guess in (None, torch.zeros_like(x_T), seq.sample, torch.full_like(x_T, 1e3)):
        exact = sample_picard(mixture_denoiser, x_T, tab, noise, cond, tol=0.0, x0_guess=guess, **kw)
        assert exact.all_converged and exact.iterations <= K
        torch.testing.assert_close(exact.sample, seq.sample, rtol=0, atol=1e-5)
    default = sample_picard(mixture_denoiser, x_T, tab, noise, cond, tol=0.05, **kw)
    zero = sample_picard(
        mixture_denoiser, x_T, tab, noise, cond, tol=0.05, x0_guess=torch.zeros_like(x_T), **kw
    )
    assert torch.equal(default.sample, zero.sample)  # 0 is the default guess
    assert default.iterations == zero.iterations
    good = sample_picard(mixture_denoiser, x_T, tab, noise, cond, tol=0.05, x0_guess=seq.sample, **kw)
    assert good.iterations < default.iterations if kind == "ddpm" else good.iterations <= default.iterations
    torch.testing.assert_close(good.sample, seq.sample, rtol=0, atol=1e-2)


def test_first_window_is_rolled_out_from_the_guess() -> None:
    """With max_iters=0 the returned iterate is the initial guess: x0_rollout fills the first window by
    the held-x̂₀ roll-out; ParaDiGMS' window_end rule leaves x_T copies."""
    K, p = 30, 6
    tab, x_T, noise, cond = setup("ddpm", K, B=1, seed=5)
    guess = torch.rand_like(x_T) - 0.5
    cap = {"tol": 0.1, "max_iters": 0, "on_max_iters": "return_iterate"}
    rolled = sample_picard(
        mixture_denoiser, x_T, tab, noise, cond, window=p, x0_guess=guess, refill="x0_rollout", **cap
    )
    x = x_T
    for j in range(p):
        x = step(tab, j, x, model_out_from_x0(tab, j, x, guess), noise[j]).prev_sample
        torch.testing.assert_close(rolled.trajectory[j + 1], x, rtol=1e-5, atol=1e-5)
    assert torch.equal(rolled.trajectory[p + 1], x_T)  # beyond the first window: x_T until refilled
    copies = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=p, refill="window_end", **cap)
    assert torch.equal(copies.trajectory, x_T.expand(K + 1, *x_T.shape))


def test_x0_guess_validation() -> None:
    tab, x_T, noise, cond = setup("ddpm", 10, B=2)
    with pytest.raises(ValueError, match="x0_guess must have shape"):
        sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=4, tol=0.1, x0_guess=x_T[:1])
    with pytest.raises(ValueError, match="not both"):
        sample_picard(
            mixture_denoiser,
            x_T,
            tab,
            noise,
            cond,
            window=4,
            tol=0.1,
            x0_guess=x_T,
            init=x_T.expand(11, *x_T.shape),
        )


def test_refill_default_is_the_sampler_config_default() -> None:
    """`sample_picard` and `SamplerConfig` default to the same refill rule (x0_rollout)."""
    import inspect

    from parapolicy.policy.config import SamplerConfig

    default = inspect.signature(sample_picard).parameters["refill"].default
    assert default == SamplerConfig().refill == "x0_rollout"
    tab, x_T, noise, cond = setup("ddpm", 30, B=1, seed=6)
    implicit = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=6, tol=0.1)
    explicit = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=6, tol=0.1, refill="x0_rollout")
    other = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=6, tol=0.1, refill="window_end")
    assert (
        torch.equal(implicit.trajectory, explicit.trajectory) and implicit.iterations == explicit.iterations
    )
    assert implicit.iterations != other.iterations


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("K", "window"), [(100, 8), (100, 32), (16, 5)])
def test_parareal_update_keeps_the_fixed_point(kind: str, K: int, window: int) -> None:
    """tol=0: the Parareal-scaled update converges to the sequential trajectory for every rule."""
    tab, x_T, noise, cond = setup(kind, K)
    seq = sequential(tab, x_T, noise, cond)
    par = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=window, tol=0.0, update="parareal")
    assert par.all_converged and par.iterations <= K
    torch.testing.assert_close(par.trajectory, seq.trajectory, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_parareal_window_one_is_bitwise_sequential(kind: str) -> None:
    tab, x_T, noise, cond = setup(kind, 20)
    seq = sequential(tab, x_T, noise, cond)
    par = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=1, tol=0.5, update="parareal")
    assert torch.equal(par.sample, seq.sample)


def test_parareal_batched_equals_per_sample() -> None:
    tab, x_T, noise, cond = setup("ddpm", 50, B=3)
    kw = {"window": 16, "tol": 0.1, "update": "parareal"}
    batched = sample_picard(mixture_denoiser, x_T, tab, noise, cond, **kw)
    for s in range(3):
        one = sample_picard(mixture_denoiser, x_T[s : s + 1], tab, noise[:, s : s + 1], cond[s : s + 1], **kw)
        torch.testing.assert_close(batched.sample[s : s + 1], one.sample, rtol=0, atol=1e-6)


def test_parareal_carry_weights_match_a_naive_recurrence() -> None:
    """new_i = y_i + a_{b+i}·(new_{i-1} - old_{i-1}) written as a loop, against the batched weights."""
    from parapolicy.policy.diffusion.parareal import HeldX0Carry

    tab, *_ = setup("ddpm", 30)
    p = 6
    slopes = HeldX0Carry(tab, p)

    b = 20
    W = slopes.weights(torch.tensor([b]))[0].double()  # (p+1, p+1)
    a = tab.rollout_coef_x.double()
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(p, dtype=torch.float64, generator=gen)  # change y_j - old_{j+1} of each refreshed slot
    grid = torch.cat([torch.zeros(1, dtype=torch.float64), g])  # (p+1,) column 0 stays 0
    carried = W @ grid
    d = torch.tensor(0.0, dtype=torch.float64)  # change of the slot entering step b+i
    for i in range(p):
        if b + i >= 30:
            break
        expected = a[b + i] * d if i else torch.tensor(0.0, dtype=torch.float64)
        # float32 weights (about 1e-7 relative each); a sum of terms of both signs can lose more
        torch.testing.assert_close(carried[i], expected, rtol=1e-5, atol=1e-7)
        d = g[i] + expected  # new_i - old_i = (y_i - old_i) + carried_i


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("update", ["picard", "parareal"])
def test_one_sample_takes_views_and_keeps_the_fixed_point(kind: str, update: str) -> None:
    """One sample reads and writes runs of consecutive rows as views: tol = 0 is still sequential."""
    tab, x_T, noise, cond = setup(kind, 100, B=1)
    seq = sequential(tab, x_T, noise, cond)
    par = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=16, tol=0.0, update=update)
    assert par.all_converged
    torch.testing.assert_close(par.trajectory, seq.trajectory, rtol=0, atol=1e-5)


def test_what_a_table_caches_depends_on_the_settings() -> None:
    """The thresholds and carry weights kept on the table are per tolerance and window: a tol-0.1 run
    first must not make a later tol-0 run stop early."""
    tab, x_T, noise, cond = setup("ddpm", 60, B=1)
    seq = sequential(tab, x_T, noise, cond)
    loose = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=8, tol=0.5, update="parareal")
    exact = sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=16, tol=0.0, update="parareal")
    assert loose.iterations < exact.iterations
    torch.testing.assert_close(exact.sample, seq.sample, rtol=0, atol=1e-5)
    assert tab.to("cpu").memo == {}  # a moved copy starts empty


def test_a_table_reused_for_another_sample_size_tests_convergence_as_a_fresh_one() -> None:
    """The thresholds scale with the elements per sample: a (1, 4, 2) run after a (1, 16, 2) one on the
    same table must stop where it stops on a table of its own."""
    tab, x_T, noise, cond = setup("ddpm", 60, B=1)
    sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=8, tol=0.3)
    small = (x_T[:, :4], noise[:, :, :4], cond)
    shared = sample_picard(mixture_denoiser, *small[:1], tab, *small[1:], window=8, tol=0.3)
    fresh_tab = make_step_table(AC, make_timesteps(T, 60), kind="ddpm")
    fresh = sample_picard(mixture_denoiser, *small[:1], fresh_tab, *small[1:], window=8, tol=0.3)
    assert shared.iterations == fresh.iterations
    assert torch.equal(shared.sample, fresh.sample)


def test_parareal_weights_of_one_start_equal_the_gathered_ones() -> None:
    from parapolicy.policy.diffusion.parareal import HeldX0Carry

    tab, *_ = setup("ddpm", 30)
    slopes = HeldX0Carry(tab, 6)
    gathered = slopes.weights(torch.tensor([3, 27]))  # (2, 7, 7)
    assert torch.equal(slopes.weights(27)[0], gathered[1])
    assert slopes.weights(3) is slopes.weights(3)  # kept after the first use
    assert torch.equal(slopes.weights(3)[0], gathered[0])


def test_parareal_saves_iterations_on_wide_windows() -> None:
    tab, x_T, noise, cond = setup("ddpm", 100, B=1)
    kw = {"window": 64, "tol": 0.01}
    picard = sample_picard(mixture_denoiser, x_T, tab, noise, cond, **kw)
    parareal = sample_picard(mixture_denoiser, x_T, tab, noise, cond, update="parareal", **kw)
    assert parareal.iterations < picard.iterations


def test_unknown_update_is_refused() -> None:
    tab, x_T, noise, cond = setup("ddpm", 10)
    with pytest.raises(ValueError, match="update must be one of"):
        sample_picard(mixture_denoiser, x_T, tab, noise, cond, window=4, tol=0.1, update="anderson")
