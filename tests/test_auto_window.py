"""window=auto: cost curve caching, latency estimate, choice; resolved by the job, never at load."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.diffusion.sequential import draw_noise
from parapolicy.policy.model.pretrained import load_policy, save_policy
from parapolicy.policy.runtime import auto_window
from parapolicy.policy.runtime.auto_window import (
    cache_path,
    calibration_jacobian,
    calibration_observations,
    choose_window,
    denoiser_cost_curve,
    interpolate_cost,
    picard_rows_per_call,
    resolve_sampler,
)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PARAPOLICY_CACHE_DIR", str(tmp_path / "cache"))


def test_cost_curve_is_measured_once_and_cached(tiny_policy, monkeypatch):
    curve = denoiser_cost_curve(tiny_policy, (1, 4), repeats=2)
    assert set(curve) == {1, 4} and all(v > 0 for v in curve.values())
    assert cache_path().is_file()
    monkeypatch.setattr(auto_window, "measure_denoiser_ms", lambda *a, **k: pytest.fail("re-measured"))
    assert denoiser_cost_curve(tiny_policy, (1, 4)) == curve


def test_each_way_of_running_the_network_has_its_own_cost_curve(tiny_policy, monkeypatch):
    measured = []

    def measure(policy, rows, *args):
        measured.append(policy.compiled_as)
        return 1.0

    monkeypatch.setattr(auto_window, "measure_denoiser_ms", measure)
    denoiser_cost_curve(tiny_policy, (1,))
    tiny_policy.set_compile("trace")
    denoiser_cost_curve(tiny_policy, (1,))
    denoiser_cost_curve(tiny_policy, (1,))  # cached now
    assert tiny_policy.compiled_as in ("trace", "cpu_graphs")
    assert measured == ["eager", tiny_policy.compiled_as]


def test_corrupt_cache_is_remeasured(tiny_policy):
    cache_path().parent.mkdir(parents=True)
    cache_path().write_text("{oops")
    assert set(denoiser_cost_curve(tiny_policy, (1,), repeats=1)) == {1}
    json.loads(cache_path().read_text())


def test_interpolation():
    curve = {1: 1.0, 4: 2.0, 8: 4.0}
    assert interpolate_cost(curve, 2) == pytest.approx(1 + 1 / 3)
    assert interpolate_cost(curve, 16) == pytest.approx(8.0)


def test_choose_window_minimises_the_expected_latency(tiny_policy, monkeypatch):
    tiny_policy.set_sampler(SamplerConfig(num_inference_steps=20))
    # a device where every call costs the same whatever its rows: the window with the fewest calls wins
    flat = dict.fromkeys((1, 2, 4, 8, 12, 16, 20, 24, 32, 48, 64), 1.0)
    monkeypatch.setattr(auto_window, "denoiser_cost_curve", lambda policy, sizes: flat)
    window, report = choose_window(
        tiny_policy, SamplerConfig(num_inference_steps=20, algorithm="picard"), candidates=(1, 4, 20)
    )
    assert report["calls"][window] == min(report["calls"].values()) < report["calls"][1] == 20
    assert report["expected_ms"][1] == pytest.approx(20.0)
    # a device where cost grows steeply with rows: window 1 (sequential order) wins
    steep = {b: float(b**2) for b in flat}
    monkeypatch.setattr(auto_window, "denoiser_cost_curve", lambda policy, sizes: steep)
    window, _ = choose_window(
        tiny_policy, SamplerConfig(num_inference_steps=20, algorithm="picard"), candidates=(1, 4, 20)
    )
    assert window == 1


def test_a_linear_coarse_model_is_calibrated_as_the_first_plan_measures_it(tiny_policy, monkeypatch):
    """coarse=linear: the window is chosen from the calls of the linear Parareal update, with the
    Jacobian a first plan on the same observation and noise would measure (not the held-x̂₀ update's)."""
    linear = SamplerConfig(
        num_inference_steps=16, algorithm="picard", update="parareal", coarse="linear", window=8
    )
    tiny_policy.set_sampler(linear)
    obs = calibration_observations(tiny_policy, n=1)
    x_T, noise = draw_noise(tiny_policy.table, (1, 16, 2), torch.Generator().manual_seed(0))
    tiny_policy.predict_action_chunk({"obs": obs}, noise=(x_T, noise))  # the first plan measures it
    jacobian = calibration_jacobian(tiny_policy, linear, obs)
    torch.testing.assert_close(jacobian, tiny_policy.coarse_jacobian, rtol=0, atol=0)
    rows = picard_rows_per_call(tiny_policy, linear, obs, coarse_jacobian=jacobian)
    held = picard_rows_per_call(tiny_policy, dataclasses.replace(linear, coarse="held_x0"), obs)
    assert rows != held  # the two updates take different calls here
    flat = dict.fromkeys((1, 2, 4, 8, 16), 1.0)
    monkeypatch.setattr(auto_window, "denoiser_cost_curve", lambda policy, sizes: flat)
    _, report = choose_window(tiny_policy, linear, obs, candidates=(4, 8))
    assert report["calls"][8] == len(rows)


def test_auto_is_resolved_by_the_job_and_refused_at_load(tmp_path, tiny_policy, monkeypatch):
    auto = SamplerConfig(num_inference_steps=10, algorithm="picard", window="auto")
    with pytest.raises(ValueError, match="resolved first"):
        tiny_policy.set_sampler(auto)
    resolved, report = resolve_sampler(tiny_policy, auto)
    assert isinstance(resolved.window, int) and report["chosen"] == resolved.window
    path = save_policy(tiny_policy, tmp_path / "ckpt")
    monkeypatch.setattr(auto_window, "measure_denoiser_ms", lambda *a, **k: pytest.fail("timed at load"))
    with pytest.raises(ValueError, match="resolved first"):
        load_policy(path, sampler=auto)
    loaded = load_policy(path, sampler=resolved)
    assert loaded.sampler == resolved and not hasattr(loaded, "auto_window_report")
    with pytest.raises(ValueError, match="integer or 'auto'"):
        SamplerConfig(window="big")


@pytest.mark.parametrize("bad", [0.0, -1.0, True, "3"])
def test_an_invalid_cached_cost_is_remeasured(tiny_policy, monkeypatch, bad):
    calls = []
    monkeypatch.setattr(
        auto_window, "measure_denoiser_ms", lambda policy, rows, *a: calls.append(rows) or 2.0
    )
    cache_path().parent.mkdir(parents=True)
    cache_path().write_text(json.dumps({auto_window._cache_key(tiny_policy): {"ms_per_call": {"1": bad}}}))
    assert denoiser_cost_curve(tiny_policy, (1,)) == {1: 2.0} and calls == [1]


def test_each_thread_count_has_its_own_cost_curve(tiny_policy, monkeypatch):
    measured = []
    monkeypatch.setattr(
        auto_window,
        "measure_denoiser_ms",
        lambda policy, rows, *a: measured.append(torch.get_num_threads()) or 1.0,
    )
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 2):  # the last one is cached
            torch.set_num_threads(n)
            denoiser_cost_curve(tiny_policy, (1,))
    finally:
        torch.set_num_threads(threads)
    assert measured == [1, 2]


def test_measuring_and_resolving_leave_the_policy_as_they_found_it(tiny_policy, monkeypatch):
    def broken(*args):
        raise RuntimeError("device lost")

    monkeypatch.setattr(auto_window, "measure_denoiser_ms", lambda *a: 1.0)
    tiny_policy.train()
    try:
        denoiser_cost_curve(tiny_policy, (1,), use_cache=False)
        assert tiny_policy.training  # measured in eval mode, then given back
        monkeypatch.setattr(auto_window, "measure_denoiser_ms", broken)
        with pytest.raises(RuntimeError, match="device lost"):
            denoiser_cost_curve(tiny_policy, (1,), use_cache=False)
        assert tiny_policy.training
    finally:
        tiny_policy.eval()
    before = tiny_policy.sampler
    auto = dataclasses.replace(SamplerConfig(algorithm="picard", tol=0.1), window="auto")
    monkeypatch.setattr(auto_window, "choose_window", lambda policy, probe: (4, {"chosen": 4}))
    resolved, _ = resolve_sampler(tiny_policy, auto)
    assert resolved == dataclasses.replace(auto, window=4) and tiny_policy.sampler == before  # not the probe
    monkeypatch.setattr(auto_window, "choose_window", broken)
    with pytest.raises(RuntimeError, match="device lost"):
        resolve_sampler(tiny_policy, auto)
    assert tiny_policy.sampler == before
