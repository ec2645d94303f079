"""Single reverse steps against closed-form float64 formulas; vectorised indexing; forward noising."""

from __future__ import annotations

import math

import pytest
import torch

from parapolicy.policy.diffusion.schedules import make_alphas_cumprod, make_step_table, make_timesteps
from parapolicy.policy.diffusion.step import (
    add_noise,
    held_x0_affine,
    model_out_from_x0,
    predict_x0,
    step,
)

T = 100
AC = make_alphas_cumprod("squaredcos_cap_v2", T)
F64 = torch.float64


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("K", [100, 10])
@pytest.mark.parametrize("i_frac", [0.0, 0.5, 1.0])
def test_ddpm_step_closed_form(K: int, i_frac: float) -> None:
    ts = make_timesteps(T, K).tolist()
    i = round(i_frac * (K - 1))
    tab = make_step_table(AC, ts, kind="ddpm", clip_sample=True, dtype=F64)
    x, eps, z = rand(2, 16, 2, seed=1), rand(2, 16, 2, seed=2), rand(2, 16, 2, seed=3)
    a = AC[ts[i]].item()
    ap = AC[ts[i + 1]].item() if i + 1 < K else 1.0
    x0 = ((x - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-1, 1)
    beta_s = 1 - a / ap
    mean = math.sqrt(ap) * beta_s / (1 - a) * x0 + math.sqrt(a / ap) * (1 - ap) / (1 - a) * x
    var = beta_s * (1 - ap) / (1 - a) if i + 1 < K else 0.0
    out = step(tab, i, x, eps, z)
    torch.testing.assert_close(out.x0_hat, x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.prev_sample, mean + math.sqrt(var) * z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(step(tab, i, x, eps, None).prev_sample, mean, rtol=1e-12, atol=1e-12)


def test_ddpm_last_step_adds_no_noise_and_returns_x0() -> None:
    tab = make_step_table(AC, make_timesteps(T, 100), kind="ddpm", dtype=F64)
    x, eps = rand(3, 16, 2, seed=4) * 0.1, rand(3, 16, 2, seed=5) * 0.1
    with_noise = step(tab, 99, x, eps, rand(3, 16, 2, seed=6) * 1e6)
    assert torch.equal(with_noise.prev_sample, step(tab, 99, x, eps, None).prev_sample)
    torch.testing.assert_close(with_noise.prev_sample, with_noise.x0_hat, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_step_closed_form(set_alpha_to_one: bool) -> None:
    ts = make_timesteps(T, 8).tolist()
    tab = make_step_table(AC, ts, kind="ddim", set_alpha_to_one=set_alpha_to_one, dtype=F64)
    x, eps = rand(2, 16, 2, seed=7), rand(2, 16, 2, seed=8)
    for i in range(8):
        a = AC[ts[i]].item()
        ap = AC[ts[i + 1]].item() if i < 7 else (1.0 if set_alpha_to_one else AC[0].item())
        x0 = ((x - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-1, 1)
        expected = math.sqrt(ap) * x0 + math.sqrt(1 - ap) * eps  # ε̂ from the unclipped prediction
        got = step(tab, i, x, eps, rand(2, 16, 2, seed=9)).prev_sample  # noise is ignored
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_dpmsolver_first_and_second_order_closed_form() -> None:
    ts = make_timesteps(T, 10).tolist()
    tab = make_step_table(AC, ts, kind="dpmsolver++", clip_sample=False, dtype=F64)

    def lam(a: float) -> float:
        return math.log(math.sqrt(a)) - math.log(math.sqrt(1 - a))

    x, eps, m1 = rand(2, 16, 2, seed=10), rand(2, 16, 2, seed=11), rand(2, 16, 2, seed=12)
    for i in (0, 4):
        a, ap = AC[ts[i]].item(), AC[ts[i + 1]].item()
        h = lam(ap) - lam(a)
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        first = math.sqrt(1 - ap) / math.sqrt(1 - a) * x - math.sqrt(ap) * (math.exp(-h) - 1) * x0
        if i == 0:
            expected = first
            got = step(tab, i, x, eps, None).prev_sample
        else:
            r = (lam(a) - lam(AC[ts[i - 1]].item())) / h  # h_{i-1} / h_i
            expected = first - 0.5 * math.sqrt(ap) * (math.exp(-h) - 1) * (x0 - m1) / r
            got = step(tab, i, x, eps, None, prev_x0=m1).prev_sample
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # the last step lands on clean data (λ' = ∞): x' = x̂₀, first order, and finite
    last = step(tab, 9, x, eps, None, prev_x0=m1)
    torch.testing.assert_close(last.prev_sample, last.x0_hat, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="step 4 is of order 2 and needs prev_x0"):
        step(tab, 4, x, eps, None)  # second order without history
    with pytest.raises(ValueError, match="steps indexed by a tensor need prev_x0"):
        step(tab, torch.tensor([4]), x.unsqueeze(0), eps.unsqueeze(0), None)  # the same, row-wise


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_predict_x0_inverts_the_forward_process(prediction_type: str) -> None:
    tab = make_step_table(
        AC, make_timesteps(T, 10), prediction_type=prediction_type, clip_sample=False, dtype=F64
    )
    x0, eps = rand(10, 16, 2, seed=13).clamp(-1, 1), rand(10, 16, 2, seed=14)
    idx = torch.arange(10)
    t = tab.timesteps[idx]
    x_t = add_noise(tab, x0, eps, t)
    a = AC[t].view(-1, 1, 1)
    target = {"epsilon": eps, "sample": x0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}[
        prediction_type
    ]
    torch.testing.assert_close(predict_x0(tab, idx, x_t, target), x0, rtol=1e-9, atol=1e-9)


def test_ddim_epsilon_for_sample_and_v_prediction() -> None:
    """DDIM needs ε̂ too: with exact targets every prediction type gives the same update."""
    x0, eps = rand(1, 16, 2, seed=15).clamp(-1, 1), rand(1, 16, 2, seed=16)
    outs = []
    pts: tuple[str, ...] = ("epsilon", "sample", "v_prediction")
    for pt in pts:
        tab = make_step_table(
            AC, make_timesteps(T, 8), kind="ddim", prediction_type=pt, clip_sample=False, dtype=F64
        )
        a = tab.alpha_bar[3].item()
        x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
        target = {"epsilon": eps, "sample": x0, "v_prediction": math.sqrt(a) * eps - math.sqrt(1 - a) * x0}[
            pt
        ]
        outs.append(step(tab, 3, x_t, target).prev_sample)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(outs[2], outs[0], rtol=1e-9, atol=1e-9)


def test_clip_sample_range() -> None:
    tab = make_step_table(AC, make_timesteps(T, 10), clip_sample=True, clip_sample_range=0.5)
    x0 = predict_x0(tab, 0, torch.randn(4, 16, 2) * 10, torch.randn(4, 16, 2))
    assert float(x0.abs().max()) == pytest.approx(0.5)


@pytest.mark.parametrize("kind", ["ddpm", "ddim", "dpmsolver++"])
def test_vectorised_rows_equal_per_step_calls_bitwise(kind: str) -> None:
    """A LongTensor idx over (S, N, H, D) gives every row exactly its own int-indexed step."""
    tab = make_step_table(AC, make_timesteps(T, 10), kind=kind)  # type: ignore[arg-type]
    idx = torch.tensor([0, 3, 4, 9])
    S = idx.shape[0]
    x, out, z, prev = (torch.randn(S, 5, 16, 2, generator=torch.Generator().manual_seed(s)) for s in range(4))
    batched = step(tab, idx, x, out, z, prev_x0=prev)
    for r, i in enumerate(idx.tolist()):
        single = step(tab, i, x[r], out[r], z[r], prev_x0=prev[r])
        assert torch.equal(batched.prev_sample[r], single.prev_sample)
        assert torch.equal(batched.x0_hat[r], single.x0_hat)
    rows = step(tab, tab.rows(idx), x, out, z, prev_x0=prev)  # coefficients gathered once
    assert torch.equal(rows.prev_sample, batched.prev_sample) and torch.equal(rows.x0_hat, batched.x0_hat)


@pytest.mark.parametrize("kind", ["ddpm", "ddim", "dpmsolver++"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_held_x0_affine_map_is_the_step_with_x0_fixed(kind: str, prediction_type: str) -> None:
    """a·x + c equals `step` fed the model output that predicts the held x̂₀ (history = the same x̂₀)."""
    tab = make_step_table(AC, make_timesteps(T, 12), kind=kind, prediction_type=prediction_type)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    idx = torch.arange(12)
    x, z = torch.randn(12, 16, 2, generator=gen), torch.randn(12, 16, 2, generator=gen)
    x0 = torch.rand(12, 16, 2, generator=gen) * 1.8 - 0.9  # inside the clip range
    out = model_out_from_x0(tab, idx, x, x0)
    want = step(tab, idx, x, out, z, prev_x0=x0).prev_sample
    for rows in (idx, tab.rows(idx)):
        a, c = held_x0_affine(tab, rows, x0, z)
        torch.testing.assert_close(a * x + c, want, rtol=1e-5, atol=1e-5)


def test_add_noise_closed_form() -> None:
    x0, eps = rand(4, 16, 2, seed=17), rand(4, 16, 2, seed=18)
    t = torch.tensor([0, 10, 50, 99])
    a = AC[t].view(-1, 1, 1)
    expected = a.sqrt() * x0 + (1 - a).sqrt() * eps
    torch.testing.assert_close(add_noise(AC, x0, eps, t), expected, rtol=1e-12, atol=1e-12)
    got32 = add_noise(make_step_table(AC, make_timesteps(T, 10)), x0.float(), eps.float(), t)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32, expected.float(), rtol=1e-5, atol=1e-6)


def test_matches_diffusers_schedulers_if_installed() -> None:
    diffusers = pytest.importorskip("diffusers")
    shape = (3, 16, 2)

    def model(x: torch.Tensor, t: int) -> torch.Tensor:
        return torch.tanh(1.3 * x) * 0.8 + 0.01 * t

    ddpm = diffusers.DDPMScheduler(
        num_train_timesteps=T,
        beta_schedule="squaredcos_cap_v2",
        variance_type="fixed_small",
        clip_sample=True,
    )
    ddim = diffusers.DDIMScheduler(
        num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", clip_sample=True, set_alpha_to_one=True
    )
    for sched, kind, K in ((ddpm, "ddpm", 100), (ddpm, "ddpm", 10), (ddim, "ddim", 8)):
        sched.set_timesteps(K)
        assert sched.timesteps.tolist() == make_timesteps(T, K).tolist()
        tab = make_step_table(AC, make_timesteps(T, K), kind=kind)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        for i, t in enumerate(sched.timesteps):
            out = model(x, int(t))
            ref = sched.step(out, t, x, generator=torch.Generator().manual_seed(i))
            z = torch.randn(shape, generator=torch.Generator().manual_seed(i))
            torch.testing.assert_close(
                step(tab, i, x, out, z).prev_sample, ref.prev_sample, rtol=1e-4, atol=2e-5
            )
            x = ref.prev_sample


@pytest.mark.parametrize("final", ["zero", "sigma_min"])
@pytest.mark.parametrize("K", [5, 10, 14, 15, 16])
def test_dpmsolver_steps_match_diffusers_if_installed(K: int, final: str) -> None:
    """DPM-Solver++(2M) step by step against diffusers' `DPMSolverMultistepScheduler` (its
    ``lower_order_final``: a first-order last step below 15 steps, or when it lands on clean data)."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T,
        beta_schedule="squaredcos_cap_v2",
        algorithm_type="dpmsolver++",
        solver_order=2,
        lower_order_final=True,
        final_sigmas_type=final,
        timestep_spacing="trailing",
    )
    sched.set_timesteps(K)
    timesteps = make_timesteps(T, K, "trailing")
    assert sched.timesteps.tolist() == timesteps.tolist()
    tab = make_step_table(
        AC,
        timesteps,
        kind="dpmsolver++",
        clip_sample=False,
        set_alpha_to_one=final == "zero",
        dtype=torch.float64,
    )
    assert tab.orders[-1] == (1 if K < 15 or final == "zero" else 2)
    x = torch.randn(3, 16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    prev_x0 = None
    for i, t in enumerate(sched.timesteps):
        out = torch.tanh(1.3 * x) * 0.8 + 0.01 * int(t)  # (3, 16, 2) a nonlinear ε model
        ref = sched.step(out, t, x).prev_sample
        ours = step(tab, i, x, out, None, prev_x0=prev_x0)
        torch.testing.assert_close(ours.prev_sample, ref, rtol=1e-4, atol=2e-5)  # diffusers: float32
        x, prev_x0 = ref, ours.x0_hat
