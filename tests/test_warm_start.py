"""Warm start across control steps: the result never changes, only the work."""

from __future__ import annotations

import pytest
import torch

from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.diffusion.warm_start import (
    PreviousChunk,
    common_random_numbers,
    next_chunk_inputs,
    shift_rows,
    warm_start_guess,
)


def test_shift_rows_drops_the_executed_rows_and_repeats_the_last():
    x = torch.arange(2 * 5 * 1, dtype=torch.float32).reshape(2, 5, 1)
    y = shift_rows(x, 2)
    assert torch.equal(y[:, :3], x[:, 2:]) and torch.equal(y[:, 3:], x[:, -1:].expand(2, 2, 1))
    assert torch.equal(shift_rows(x, 0), x)
    with pytest.raises(ValueError, match="shift"):
        shift_rows(x, 6)
    sample = torch.randn(2, 5, 3)
    assert torch.equal(warm_start_guess(sample, 2)[:, :3], sample[:, 2:])


def test_common_random_numbers_shift_the_noise():
    x_T, noise = torch.randn(2, 16, 2), torch.randn(10, 2, 16, 2)
    x2, n2 = common_random_numbers(x_T, noise, 8, torch.Generator().manual_seed(0))
    assert torch.equal(x2[:, :8], x_T[:, 8:]) and torch.equal(n2[:, :, :8], noise[:, :, 8:])
    assert not torch.equal(x2[:, 8:], x_T[:, 8:])


@pytest.mark.parametrize("crn", [False, True])
def test_warm_started_picard_gives_the_sequential_result(tiny_policy, crn):
    common = {"kind": "ddpm", "num_inference_steps": 30}
    picard = SamplerConfig(
        **common, algorithm="picard", window=6, tol=1e-6, warm_start=True, common_random_numbers=crn
    )
    tiny_policy.set_sampler(picard)
    gen = torch.Generator().manual_seed(0)
    h1, h2 = (torch.rand(2, 2, 20, generator=gen) * 512 for _ in range(2))
    first = tiny_policy.predict_action_chunk({"obs": h1}, generator=gen)
    noise, guess = tiny_policy.warm_start_inputs(first, 2, gen)
    assert guess is not None and (noise is not None) == crn
    assert tiny_policy.warm_start_inputs(first, 3, gen) == (None, None)  # another batch: nothing reused
    torch.testing.assert_close(guess[:, :-8], first.result.sample[:, 8:])
    warm = tiny_policy.predict_action_chunk({"obs": h2}, noise=noise, generator=gen, x0_guess=guess)
    tiny_policy.set_sampler(SamplerConfig(**common))
    seq = tiny_policy.predict_action_chunk({"obs": h2}, noise=(warm.x_T, warm.noise))
    torch.testing.assert_close(warm.plan, seq.plan, atol=1e-3, rtol=0)  # px
    if crn:
        assert torch.equal(warm.x_T[:, :8], first.x_T[:, 8:])


def test_select_action_warm_starts_every_chunk_after_the_first(tiny_policy, monkeypatch):
    tiny_policy.set_sampler(
        SamplerConfig(num_inference_steps=20, algorithm="picard", window=5, warm_start=True)
    )
    inits = []
    original = tiny_policy.predict_action_chunk

    def spy(obs, noise=None, generator=None, x0_guess=None):
        inits.append(x0_guess)
        return original(obs, noise=noise, generator=generator, x0_guess=x0_guess)

    monkeypatch.setattr(tiny_policy, "predict_action_chunk", spy)
    gen = torch.Generator().manual_seed(0)
    for _ in range(17):
        tiny_policy.select_action({"obs": torch.rand(20, generator=gen) * 512}, generator=gen)
    assert [i is None for i in inits] == [True, False, False]
    tiny_policy.reset()
    tiny_policy.select_action({"obs": torch.rand(20, generator=gen) * 512}, generator=gen)
    assert inits[-1] is None  # no warm start across episodes


def test_crn_requires_warm_start():
    with pytest.raises(ValueError, match="warm_start"):
        SamplerConfig(common_random_numbers=True)


@pytest.mark.parametrize("crn", [False, True])
def test_next_chunk_inputs_is_the_shift_of_the_previous_chunk(crn):
    gen = torch.Generator().manual_seed(1)
    prev = PreviousChunk(torch.randn(2, 16, 2), torch.randn(2, 16, 2), torch.randn(5, 2, 16, 2))
    noise, guess = next_chunk_inputs(prev, 3, crn, gen)
    assert torch.equal(guess, warm_start_guess(prev.sample, 3))
    assert (noise is not None) == crn
    if crn:
        x_T, n = noise
        assert torch.equal(x_T[:, :13], prev.x_T[:, 3:]) and torch.equal(n[:, :, :13], prev.noise[:, :, 3:])
    with pytest.raises(ValueError, match="shift must be in"):
        next_chunk_inputs(prev, 0, crn, gen)
    with pytest.raises(ValueError, match="shift must be in"):
        next_chunk_inputs(prev, 17, crn, gen)
