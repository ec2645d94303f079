"""Sequential sampler and noise drawing: full loops with closed-form denoisers."""

from __future__ import annotations

import pytest
import torch

from parapolicy.policy.diffusion.schedules import make_alphas_cumprod, make_step_table, make_timesteps
from parapolicy.policy.diffusion.sequential import SampleResult, draw_noise, sample_sequential
from parapolicy.policy.diffusion.step import step

T = 100
AC = make_alphas_cumprod("squaredcos_cap_v2", T)


def gaussian_denoiser(mean: float, std: float):
    """Exact ε-prediction E[ε | x_t] for data x_0 ~ N(mean, std²) per element (closed form)."""
    ac = AC.float()

    def denoise(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        a = ac[t].view(-1, 1, 1)
        v = a * std**2 + (1 - a)  # Var(x_t)
        return (1 - a).sqrt() * (x - a.sqrt() * mean) / v

    return denoise


def linear_denoiser(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    assert t.dtype == torch.int64 and t.shape == x.shape[:1]
    c = 0.0 if cond is None else cond.mean(dim=1).view(-1, 1, 1)
    return 0.5 * x + 0.3 * c + 0.002 * t.view(-1, 1, 1).float()


def test_ddpm_loop_has_the_exact_output_distribution() -> None:
    """Gaussian data and its exact (linear) ε make each DDPM step affine, x' = A_i·x + c_i + σ_i·z, so the
    output variance follows v <- A_i²·v + σ_i² from v = 1 exactly; the sampled batch must match it."""
    tab = make_step_table(AC, make_timesteps(T, T), kind="ddpm", clip_sample=False, dtype=torch.float64)
    den = gaussian_denoiser(0.3, 0.1)
    var = 1.0
    for i, t in enumerate(tab.timestep_values):
        ones, zeros = torch.ones(1, 1, 1, dtype=torch.float64), torch.zeros(1, 1, 1, dtype=torch.float64)
        tt = torch.tensor([t])
        A = (
            step(tab, i, ones, den(ones, tt, None)).prev_sample
            - step(tab, i, zeros, den(zeros, tt, None)).prev_sample
        )
        var = float(A) ** 2 * var + float(tab.sigma[i]) ** 2
    x_T, noise = draw_noise(tab, (512, 16, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    res = sample_sequential(den, x_T, tab, noise, None)
    assert float(res.sample.mean()) == pytest.approx(0.3, abs=0.005)
    assert float(res.sample.std()) == pytest.approx(var**0.5, rel=0.03)
    assert 0.08 < var**0.5 < 0.1  # fixed_small slightly under-disperses at T = 100


@pytest.mark.parametrize(("kind", "K"), [("ddim", 100), ("dpmsolver++", 16)])
def test_ode_loops_recover_gaussian_data(kind: str, K: int) -> None:
    tab = make_step_table(AC, make_timesteps(T, K), kind=kind, clip_sample=False)  # type: ignore[arg-type]
    x_T, noise = draw_noise(tab, (256, 16, 2), torch.Generator().manual_seed(0))
    res = sample_sequential(gaussian_denoiser(0.3, 0.1), x_T, tab, noise, None)
    assert float(res.sample.mean()) == pytest.approx(0.3, abs=0.01)
    assert float(res.sample.std()) == pytest.approx(0.1, rel=0.1)


@pytest.mark.parametrize("kind", ["ddpm", "ddim", "dpmsolver++"])
def test_sequential_equals_hand_loop(kind: str) -> None:
    tab = make_step_table(AC, make_timesteps(T, 10), kind=kind)  # type: ignore[arg-type]
    x_T, noise = draw_noise(tab, (3, 16, 2), torch.Generator().manual_seed(1))
    cond = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    res = sample_sequential(linear_denoiser, x_T, tab, noise, cond, return_trajectory=True)
    x, prev = x_T, None
    for i, t in enumerate(tab.timestep_values):
        out = linear_denoiser(x, torch.full((3,), t), cond)
        o = step(tab, i, x, out, noise[i], prev_x0=prev)
        x, prev = o.prev_sample, o.x0_hat
        assert torch.equal(res.trajectory[i + 1], x)
    assert torch.equal(res.sample, x) and torch.equal(res.trajectory[0], x_T)
    assert (res.iterations, res.model_calls, res.sequential_passes, res.rows_evaluated) == (10, 10, 10, 30)
    assert res.all_converged and res.converged.tolist() == [True] * 3 and res.rows_per_call == (3,) * 10
    assert res.wall_time_s >= 0 and isinstance(res, SampleResult)


def test_deterministic_kinds_ignore_noise() -> None:
    tab = make_step_table(AC, make_timesteps(T, 8), kind="ddim")
    x_T, noise = draw_noise(tab, (2, 16, 2), torch.Generator().manual_seed(3))
    a = sample_sequential(linear_denoiser, x_T, tab, noise, None).sample
    assert torch.equal(a, sample_sequential(linear_denoiser, x_T, tab, None, None).sample)


def test_draw_noise_shapes_and_determinism() -> None:
    tab = make_step_table(AC, make_timesteps(T, 10))
    x_T, noise = draw_noise(tab, (4, 16, 2), torch.Generator().manual_seed(5), dtype=torch.float64)
    assert x_T.shape == (4, 16, 2) and noise.shape == (10, 4, 16, 2) and noise.dtype == torch.float64
    x2, n2 = draw_noise(tab, (4, 16, 2), torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.equal(x_T, x2) and torch.equal(noise, n2)


def test_per_sample_generators_do_not_depend_on_the_batch() -> None:
    tab = make_step_table(AC, make_timesteps(T, 10))
    gens = [torch.Generator().manual_seed(s) for s in (7, 8, 9)]
    x_T, noise = draw_noise(tab, (3, 16, 2), gens)
    x1, n1 = draw_noise(tab, (1, 16, 2), [torch.Generator().manual_seed(8)])
    assert torch.equal(x_T[1:2], x1) and torch.equal(noise[:, 1:2], n1)
    with pytest.raises(ValueError, match="one generator per sample \\(2\\), got 3"):
        draw_noise(tab, (2, 16, 2), gens)
    for bad in (5, [5, 6], []):  # a seed is not a generator: say how to make one
        with pytest.raises(ValueError, match=r"generator must be a CPU torch.Generator.*manual_seed\(seed\)"):
            draw_noise(tab, (2, 16, 2), bad)


def test_input_validation() -> None:
    tab = make_step_table(AC, make_timesteps(T, 10))
    x_T, noise = draw_noise(tab, (2, 16, 2), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="DDPM sampling needs the pre-drawn step noise"):
        sample_sequential(linear_denoiser, x_T, tab, None, None)  # DDPM needs its noise
    with pytest.raises(ValueError, match="noise must have shape \\(10, 2, 16, 2\\), got \\(5, 2, 16, 2\\)"):
        sample_sequential(linear_denoiser, x_T, tab, noise[:5], None)
    with pytest.raises(ValueError, match="cond must have batch size 2, got 3"):
        sample_sequential(linear_denoiser, x_T, tab, noise, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="table is on meta but x_T is on cpu"):
        sample_sequential(linear_denoiser, x_T, tab.to("meta"), noise, None)
    wide = make_step_table(AC, make_timesteps(T, 10), dtype=torch.float64)
    x64, noise64 = draw_noise(wide, (2, 16, 2), torch.Generator().manual_seed(0))  # the table's dtype
    assert x64.dtype == noise64.dtype == torch.float64
    with pytest.raises(ValueError, match="table is torch.float64 but x_T is torch.float32: draw x_T"):
        sample_sequential(linear_denoiser, x_T, wide, noise.double(), None)
