"""Closed-form checks of the noise schedules, inference timesteps and the StepTable."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from parapolicy.policy.diffusion.schedules import make_alphas_cumprod, make_step_table, make_timesteps


def betas_of(ac: torch.Tensor) -> torch.Tensor:
    return 1.0 - ac / torch.cat([torch.ones(1, dtype=ac.dtype), ac[:-1]])


def test_squaredcos_cap_v2_values_match_reference() -> None:
    ac = make_alphas_cumprod("squaredcos_cap_v2", 100)
    betas = betas_of(ac)
    assert ac.dtype == torch.float64 and ac.shape == (100,)
    assert betas[0].item() == pytest.approx(6.3e-4, rel=0.01)
    assert betas[99].item() == pytest.approx(0.999, abs=1e-12)  # capped
    assert ac[0].item() == pytest.approx(0.99937, abs=1e-5)
    assert ac[49].item() == pytest.approx(0.494, abs=1e-3)
    assert ac[99].item() == pytest.approx(2.4e-7, rel=0.02)
    assert bool((ac[1:] < ac[:-1]).all()) and bool((ac > 0).all()) and bool((ac < 1).all())


def test_squaredcos_formula_by_hand() -> None:
    T = 100

    def f(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    expected, prod = [], 1.0
    for t in range(T):
        prod *= 1.0 - min(1.0 - f((t + 1) / T) / f(t / T), 0.999)
        expected.append(prod)
    torch.testing.assert_close(
        make_alphas_cumprod("squaredcos_cap_v2", T), torch.tensor(expected, dtype=torch.float64)
    )


def test_linear_schedule() -> None:
    ac = make_alphas_cumprod("linear", 10, beta_start=1e-3, beta_end=0.1)
    torch.testing.assert_close(betas_of(ac), torch.linspace(1e-3, 0.1, 10, dtype=torch.float64))
    with pytest.raises(ValueError, match="beta schedule must be one of .*, got 'cosine'"):
        make_alphas_cumprod("cosine", 10)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("T", "K", "spacing", "offset", "expected"),
    [
        (100, 100, "leading", 0, list(range(99, -1, -1))),
        (100, 10, "leading", 0, [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]),
        (100, 10, "leading", 1, [91, 81, 71, 61, 51, 41, 31, 21, 11, 1]),
        (100, 8, "leading", 0, [84, 72, 60, 48, 36, 24, 12, 0]),
        (100, 10, "trailing", 0, [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]),
        (1000, 30, "trailing", 0, None),
        (100, 5, "linspace", 0, [99, 74, 50, 25, 0]),
    ],
)
def test_timestep_spacing(T: int, K: int, spacing: str, offset: int, expected: list[int] | None) -> None:
    ts = make_timesteps(T, K, spacing, offset)  # type: ignore[arg-type]
    assert ts.dtype == torch.int64 and ts.shape == (K,)
    assert bool((ts[1:] < ts[:-1]).all()) and int(ts.min()) >= 0 and int(ts.max()) <= T - 1
    if expected is not None:
        assert ts.tolist() == expected
    else:  # 1000/30 trailing has uneven gaps (33 or 34): the case a uniform stride gets wrong
        assert ts[0] == 999 and set((ts[:-1] - ts[1:]).tolist()) == {33, 34}


def test_timesteps_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_inference_steps <= num_train_timesteps, got 101 and 100"):
        make_timesteps(100, 101)
    with pytest.raises(ValueError, match="got 0 and 100"):
        make_timesteps(100, 0)
    with pytest.raises(ValueError, match="spacing 'leading' with offset 1 gives invalid timesteps"):
        make_timesteps(100, 100, "leading", 1)  # 100 > T - 1
    with pytest.raises(ValueError, match="steps_offset is only defined for 'leading'"):
        make_timesteps(100, 10, "trailing", 1)


def test_ddpm_table_terminal_and_indexing() -> None:
    ac = make_alphas_cumprod("squaredcos_cap_v2", 100)
    ts = make_timesteps(100, 10)
    tab = make_step_table(ac, ts, kind="ddpm", dtype=torch.float64)
    assert tab.num_steps == 10 and tab.timestep_values == tuple(ts.tolist())
    torch.testing.assert_close(tab.alpha_bar, ac[ts])
    torch.testing.assert_close(tab.alpha_bar_prev[:-1], ac[ts[1:]])
    assert tab.alpha_bar_prev[-1].item() == 1.0
    assert tab.sigma[-1].item() == 0.0  # no noise at t = 0
    assert tab.posterior_variance[-1].item() == 0.0
    assert bool((tab.sigma[:-1] > 0).all())
    # the posterior mean of the last step returns x̂₀ exactly: coef_x0 = 1, coef_xt = 0
    assert tab.posterior_coef_x0[-1].item() == pytest.approx(1.0, abs=1e-15)
    assert tab.posterior_coef_xt[-1].item() == 0.0


def test_ddpm_table_against_hand_formulas() -> None:
    ac = make_alphas_cumprod("squaredcos_cap_v2", 100)
    ts = [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    tab = make_step_table(ac, ts, kind="ddpm", dtype=torch.float64)
    for i in (0, 4, 8):
        a, ap = ac[ts[i]].item(), ac[ts[i + 1]].item()
        alpha_s, beta_s = a / ap, 1 - a / ap
        assert tab.posterior_coef_x0[i].item() == pytest.approx(math.sqrt(ap) * beta_s / (1 - a), rel=1e-12)
        assert tab.posterior_coef_xt[i].item() == pytest.approx(
            math.sqrt(alpha_s) * (1 - ap) / (1 - a), rel=1e-12
        )
        assert tab.sigma[i].item() == pytest.approx(math.sqrt(beta_s * (1 - ap) / (1 - a)), rel=1e-12)
        assert tab.tol_variance[i].item() == pytest.approx(beta_s * (1 - ap) / (1 - a), rel=1e-12)


def test_uneven_custom_timesteps_use_next_list_element() -> None:
    ac = make_alphas_cumprod("squaredcos_cap_v2", 100)
    tab = make_step_table(ac, [99, 60, 59, 10, 0], kind="ddpm", dtype=torch.float64)
    torch.testing.assert_close(
        tab.alpha_bar_prev, torch.cat([ac[[60, 59, 10, 0]], torch.ones(1, dtype=torch.float64)])
    )


@pytest.mark.parametrize(("set_alpha_to_one", "final"), [(True, None), (False, 0)])
def test_ddim_final_alpha(set_alpha_to_one: bool, final: int | None) -> None:
    ac = make_alphas_cumprod("squaredcos_cap_v2", 100)
    tab = make_step_table(ac, make_timesteps(100, 8), kind="ddim", set_alpha_to_one=set_alpha_to_one)
    expected = 1.0 if final is None else ac[final].item()
    assert tab.alpha_bar_prev[-1].item() == pytest.approx(expected, rel=1e-6)
    assert bool((tab.sigma == 0).all())  # η = 0: never adds noise
    assert bool((tab.tol_variance > 0).all()) and bool(torch.isfinite(tab.tol_variance).all())


def test_tolerance_variance_fallback_at_the_end() -> None:
    ac = make_alphas_cumprod("squaredcos_cap_v2", 100)
    for kind in ("ddpm", "ddim", "dpmsolver++"):
        tab = make_step_table(ac, make_timesteps(100, 10), kind=kind)  # type: ignore[arg-type]
        assert tab.posterior_variance[-1].item() == 0.0
        assert tab.tol_variance[-1].item() == pytest.approx(tab.posterior_variance[-2].item(), rel=1e-6)
        torch.testing.assert_close(tab.tol_variance[:-1], tab.posterior_variance[:-1])
    one = make_step_table(ac, [0], kind="ddpm")  # a single step: nothing positive to fall back on
    assert one.tol_variance[0].item() == pytest.approx(1e-20)


def test_dpmsolver_orders_and_log_snr() -> None:
    ac = make_alphas_cumprod("squaredcos_cap_v2", 100)
    tab = make_step_table(ac, make_timesteps(100, 10), kind="dpmsolver++", dtype=torch.float64)
    assert tab.orders == (1,) + (2,) * 8 + (1,)
    assert tab.dpm_coef_x0_prev[0].item() == 0.0 and tab.dpm_coef_x0_prev[-1].item() == 0.0
    assert bool((tab.dpm_coef_x0_prev[1:-1] < 0).all())
    a = ac[make_timesteps(100, 10)]
    torch.testing.assert_close(tab.lambda_, 0.5 * torch.log(a / (1 - a)))
    assert math.isinf(tab.lambda_prev[-1].item())
    assert tab.dpm_coef_x[-1].item() == 0.0 and tab.dpm_coef_x0[-1].item() == pytest.approx(1.0)
    long = make_step_table(ac, make_timesteps(100, 20), kind="dpmsolver++", set_alpha_to_one=False)
    assert long.orders == (1,) + (2,) * 19  # K >= 15 and a finite final level: no lower_order_final
    assert make_step_table(ac, make_timesteps(100, 10), kind="ddpm").orders == (1,) * 10


def test_table_dtype_device_and_frozen() -> None:
    ac = make_alphas_cumprod("squaredcos_cap_v2", 100)
    tab = make_step_table(ac, make_timesteps(100, 100), dtype=torch.float32)
    assert tab.dtype == torch.float32 and tab.tol_variance.dtype == torch.float32
    assert tab.timesteps.dtype == torch.int64 and tab.device == torch.device("cpu")
    moved = tab.to("cpu")
    assert torch.equal(moved.sigma, tab.sigma) and moved.orders == tab.orders
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'kind'"):
        tab.kind = "ddim"  # type: ignore[misc]
    with pytest.raises(ValueError, match="strictly decreasing in \\[0, 99\\], got \\[10, 20\\]"):
        make_step_table(ac, [10, 20])
    for kind in ("ddpm", "dpmsolver++"):  # a repeated timestep is a zero-length step
        with pytest.raises(ValueError, match="strictly decreasing in \\[0, 99\\], got \\[50, 50, 10, 0\\]"):
            make_step_table(ac, [50, 50, 10, 0], kind=kind)
    for half in (torch.float16, torch.bfloat16):  # tiny variances would underflow in half precision
        low = make_step_table(ac, make_timesteps(100, 10), dtype=half)
        assert low.dtype == half and low.tol_variance.dtype == torch.float32
    with pytest.raises(ValueError, match=r"coefficients must have shape \(100, \d+\), got \(100, \d+\)"):
        dataclasses.replace(tab, coefficients=tab.coefficients[:, :-1])
    with pytest.raises(ValueError, match="strictly decreasing in \\[0, 99\\], got \\[100\\]"):
        make_step_table(ac, [100])
    with pytest.raises(ValueError, match="unknown sampler kind 'euler'"):
        make_step_table(ac, [10], kind="euler")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["ddpm", "ddim", "dpmsolver++"])
def test_table_builds_on_another_device(kind):
    """The held-x̂₀ coefficients are derived on the CPU, then every tensor goes to the target device
    ("meta" stands in for CUDA here: mixing devices during the build fails the same way)."""
    tab = make_step_table(
        make_alphas_cumprod("squaredcos_cap_v2", 100), make_timesteps(100, 10), kind=kind, device="meta"
    )
    cpu = make_step_table(make_alphas_cumprod("squaredcos_cap_v2", 100), make_timesteps(100, 10), kind=kind)
    tensors = [getattr(tab, f) for f in ("timesteps", "coefficients", "rollout_coef_x", "tol_variance")]
    assert all(t.device.type == "meta" for t in tensors)
    assert tab.coefficients.shape == cpu.coefficients.shape


DIFFUSERS_KS = (1, 5, 8, 10, 16, 33, 50, 99)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_spacing_names_match_diffusers_ddpm_and_ddim(spacing: str) -> None:
    diffusers = pytest.importorskip("diffusers")
    for cls in (diffusers.DDPMScheduler, diffusers.DDIMScheduler):
        for K in (*DIFFUSERS_KS, 100):
            sched = cls(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", timestep_spacing=spacing)
            sched.set_timesteps(K)
            assert make_timesteps(100, K, spacing).tolist() == sched.timesteps.tolist(), (cls.__name__, K)


@pytest.mark.parametrize(
    ("ours", "theirs", "offset"),
    [
        ("dpm_leading", "leading", 0),
        ("dpm_leading", "leading", 1),
        ("dpm_linspace", "linspace", 0),
        ("trailing", "trailing", 0),
    ],
)
def test_dpm_spacings_match_diffusers_dpmsolver_multistep(ours: str, theirs: str, offset: int) -> None:
    """DPMSolverMultistepScheduler's "leading"/"linspace" grids are our "dpm_leading"/"dpm_linspace"."""
    diffusers = pytest.importorskip("diffusers")
    for K in DIFFUSERS_KS:
        if K * (100 // (K + 1)) + offset > 99:
            continue  # diffusers returns timestep 100 here (out of range); we refuse it (tested below)
        sched = diffusers.DPMSolverMultistepScheduler(
            num_train_timesteps=100,
            beta_schedule="squaredcos_cap_v2",
            timestep_spacing=theirs,
            steps_offset=offset,
        )
        sched.set_timesteps(K)
        assert make_timesteps(100, K, ours, offset).tolist() == sched.timesteps.tolist(), K
    if ours != "trailing":  # the same names mean a different grid in diffusers' DDPM/DDIM schedulers
        assert make_timesteps(100, 10, ours).tolist() != make_timesteps(100, 10, theirs).tolist()


def test_dpm_spacings_by_hand_and_degenerate_grids() -> None:
    assert make_timesteps(100, 10, "dpm_leading").tolist() == [90, 81, 72, 63, 54, 45, 36, 27, 18, 9]
    assert make_timesteps(100, 4, "dpm_linspace").tolist() == [99, 74, 50, 25]
    with pytest.raises(ValueError, match="spacing 'dpm_leading' with offset 0 gives invalid timesteps"):
        make_timesteps(100, 100, "dpm_leading")  # T // (K + 1) = 0: every timestep 0
    with pytest.raises(ValueError, match="steps_offset is only defined for 'leading' and 'dpm_leading'"):
        make_timesteps(100, 10, "dpm_linspace", 1)
