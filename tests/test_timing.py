"""The one timed denoiser wrapper: counts, rows, restore on exit."""

import pytest
import torch

from parapolicy.policy.runtime.timing import TimedDenoiser, timed_call, timed_denoiser


def test_timed_denoiser_counts_calls_rows_and_time():
    def slow(x, t, cond):
        return x * 2

    timer = TimedDenoiser(slow, "cpu")
    x = torch.ones(3, 4, 2)
    out = timer(x, torch.zeros(3, dtype=torch.long), None)
    timer(x[:1], torch.zeros(1, dtype=torch.long), None)
    assert torch.equal(out, x * 2)
    assert (timer.calls, timer.rows) == (2, 4)
    assert timer.seconds > 0
    assert len(timer.call_seconds) == 2 and sum(timer.call_seconds) == timer.seconds
    timer.reset()
    assert (timer.calls, timer.rows, timer.seconds, timer.call_seconds) == (0, 0, 0.0, [])


def test_timed_call_returns_the_result_and_its_seconds():
    seconds, out = timed_call(lambda: torch.arange(3) * 2, "cpu")
    assert torch.equal(out, torch.tensor([0, 2, 4])) and seconds >= 0.0
    with pytest.raises(ZeroDivisionError, match="division by zero"):
        timed_call(lambda: 1 / 0, "cpu")


def test_timed_denoiser_refuses_non_callable():
    with pytest.raises(TypeError, match="inner denoiser must be callable"):
        TimedDenoiser(3, "cpu")


def test_timed_denoiser_context_routes_and_restores(tiny_policy):
    def own(x, t, cond):
        return tiny_policy.local_denoise(x, t, cond)

    tiny_policy.set_denoiser(own)
    cfg = tiny_policy.config
    x = torch.zeros(2, cfg.horizon, cfg.action_dim)
    t = torch.zeros(2, dtype=torch.long)
    cond = torch.zeros(2, cfg.global_cond_dim)
    with timed_denoiser(tiny_policy) as timer:
        tiny_policy.denoise(x, t, cond)
        assert tiny_policy.installed_denoiser is timer
    assert (timer.calls, timer.rows) == (1, 2)
    assert tiny_policy.installed_denoiser is own
    tiny_policy.set_denoiser(None)
    with pytest.raises(RuntimeError, match="boom"), timed_denoiser(tiny_policy):
        raise RuntimeError("boom")
    assert tiny_policy.installed_denoiser is None
