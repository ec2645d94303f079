"""`run_sampler`: a `SamplerConfig` reaches the sampler whole (every field, none dropped or defaulted)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.diffusion.dispatch import run_sampler
from parapolicy.policy.diffusion.picard import sample_picard
from parapolicy.policy.diffusion.schedules import make_alphas_cumprod, make_step_table, make_timesteps
from parapolicy.policy.diffusion.sequential import draw_noise, sample_sequential

T = 100
AC = make_alphas_cumprod("squaredcos_cap_v2", T)


def denoiser(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    return torch.tanh(1.3 * x) * 0.8 + 0.01 * t.view(-1, 1, 1) + cond.mean(1).view(-1, 1, 1)


def problem(K: int = 40):
    table = make_step_table(AC, make_timesteps(T, K), kind="ddpm")
    x_T, noise = draw_noise(table, (2, 16, 2), torch.Generator().manual_seed(0))
    return table, x_T, noise, torch.randn(2, 4, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "fields",
    [
        {"window": 5, "tol": 0.3, "max_iters": 4, "on_max_iters": "return_iterate", "refill": "window_end"},
        {"window": 7, "tol": 1e-9, "abs_floor": 1e6, "update": "parareal"},  # abs_floor decides alone
        {"window": 6, "tol": 0.05, "max_iters": 3, "on_max_iters": "finish_sequential"},
    ],
)
def test_every_picard_field_reaches_the_sampler(fields: dict) -> None:
    table, x_T, noise, cond = problem()
    cfg = SamplerConfig(algorithm="picard", **fields)
    got = run_sampler(cfg, denoiser, x_T, table, noise, cond)
    names = ("window", "tol", "max_iters", "abs_floor", "on_max_iters", "refill")
    every = {name: getattr(cfg, name) for name in names}
    want = sample_picard(denoiser, x_T, table, noise, cond, update=cfg.update, **every)
    assert (got.iterations, got.model_calls) == (want.iterations, want.model_calls)
    assert torch.equal(got.trajectory, want.trajectory) and torch.equal(got.converged, want.converged)
    default = sample_picard(denoiser, x_T, table, noise, cond, window=cfg.window, tol=SamplerConfig.tol)
    assert not torch.equal(got.trajectory, default.trajectory)  # the fields matter


def test_a_sequential_config_runs_the_sequential_loop_and_auto_must_be_resolved() -> None:
    table, x_T, noise, cond = problem(10)
    got = run_sampler(SamplerConfig(), denoiser, x_T, table, noise, cond)
    assert torch.equal(got.sample, sample_sequential(denoiser, x_T, table, noise, cond).sample)
    auto = dataclasses.replace(SamplerConfig(algorithm="picard"), window="auto")
    with pytest.raises(ValueError, match="sampler.window must be resolved to an integer first, got 'auto'"):
        run_sampler(auto, denoiser, x_T, table, noise, cond)
