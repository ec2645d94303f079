"""plan_for_budget against choices worked out by hand on a deterministic device.

The two measured inputs of the planner are replaced by fixed tables: the cost of one denoiser call
against its rows (`auto_window.denoiser_cost_curve`) and the rows of each call of a Picard solve
(`auto_window.picard_rows_per_call`). Everything else (choice, cap, expected latency) is the real code.
"""

from __future__ import annotations

import pytest

from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.control.evaluation import EvalConfig
from parapolicy.policy.control.rollout import plan_for_budget, run_rollouts
from parapolicy.policy.control.settings import ControlConfig
from parapolicy.policy.runtime import auto_window

# rows of each call of a K=10 Picard solve, per window
ROWS = {2: (2,) * 5, 4: (4,) * 3, 8: (8,) * 2, 10: (10,) * 2}
# ms per call against rows; with ROWS the expected latencies are
#   window 2: 5 x 1.2 = 6.0, window 4: 3 x 1.6 = 4.8 (fastest),
#   window 8: 2 x 3.5 = 7.0, window 10: 2 x 4.5 = 9.0
COST = {1: 1.0, 2: 1.2, 4: 1.6, 8: 3.5, 10: 4.5}
PICARD = SamplerConfig(num_inference_steps=10, algorithm="picard", window=2, max_iters=7)


@pytest.fixture
def device(monkeypatch, tiny_policy):
    """A device with the cost table `cost` (set `device.update(...)` to change it)."""
    cost = dict(COST)

    def curve(policy, sizes):
        return {s: cost[s] for s in sizes}

    def rows(policy, sampler, obs, seed=0, coarse_jacobian=None):
        assert policy.table.num_steps == 10
        return ROWS[sampler.window]

    monkeypatch.setattr(auto_window, "denoiser_cost_curve", curve)
    monkeypatch.setattr(auto_window, "picard_rows_per_call", rows)
    tiny_policy.set_sampler(SamplerConfig(num_inference_steps=10))
    return cost


def test_the_fastest_window_and_the_iterations_that_fit(tiny_policy, device):
    _, choice = auto_window.choose_window(tiny_policy, PICARD, candidates=(2, 4, 8))
    assert choice["expected_ms"] == pytest.approx({2: 6.0, 4: 4.8, 8: 7.0})
    chosen, report = plan_for_budget(tiny_policy, PICARD, budget_ms=10.0, candidates=(2, 4, 8))
    assert chosen.window == report["window"] == 4  # not 8, the slowest; not 2, the first
    assert report["per_call_ms"] == pytest.approx(1.6)
    assert chosen.max_iters == report["max_iters"] == 5  # floor(0.9 * 10 / 1.6) = 5 (< the sampler's 7)
    assert report["expected_ms"] == pytest.approx(4.8) and report["meets_budget"] is True
    assert chosen.tol == PICARD.tol and chosen.kind == PICARD.kind  # the rest is kept


def test_a_tight_budget_caps_iterations_and_reports_the_miss(tiny_policy, device):
    sampler = SamplerConfig(num_inference_steps=10, algorithm="picard", window=2)  # no cap of its own
    chosen, report = plan_for_budget(tiny_policy, sampler, budget_ms=5.0, candidates=(2, 4, 8))
    assert chosen.window == 4 and chosen.max_iters == 2  # floor(4.5 / 1.6)
    assert report["meets_budget"] is False  # 4.8 ms > 0.9 x 5 ms
    chosen, _ = plan_for_budget(tiny_policy, sampler, budget_ms=5.0, margin=1.0, candidates=(2, 4, 8))
    assert chosen.max_iters == 3  # floor(5 / 1.6)
    capped = SamplerConfig(num_inference_steps=10, algorithm="picard", window=2, max_iters=1)
    assert plan_for_budget(tiny_policy, capped, budget_ms=100.0, candidates=(2, 4))[0].max_iters == 1


def test_a_flat_cost_curve_prefers_the_fewest_calls(tiny_policy, device):
    device.update(dict.fromkeys(COST, 1.0))
    chosen, report = plan_for_budget(tiny_policy, PICARD, budget_ms=10.0, candidates=(2, 4, 8))
    assert chosen.window == 8 and report["expected_ms"] == pytest.approx(2.0)  # 5, 3, 2 calls of 1 ms
    assert chosen.max_iters == 7  # floor(9 / 1) = 9, capped by the sampler's 7


def test_a_sequential_sampler_is_kept_and_judged_at_k_calls_of_one_row(tiny_policy, device):
    seq = SamplerConfig(num_inference_steps=10)
    same, report = plan_for_budget(tiny_policy, seq, budget_ms=30.0)
    assert same == seq and report["changed"] is False
    assert report["expected_ms"] == pytest.approx(10.0) and report["meets_budget"] is True  # 10 x 1.0
    assert plan_for_budget(tiny_policy, seq, budget_ms=11.0)[1]["meets_budget"] is False  # 10 > 9.9


def test_auto_budget_rollouts_run_the_planned_sampler(tiny_policy, device):
    picard = SamplerConfig(num_inference_steps=10, algorithm="picard", window=2)
    tiny_policy.set_sampler(picard)
    eval_cfg = EvalConfig(n_episodes=1, batch_size=1, max_steps=8, max_videos=0, progress=False)
    r = run_rollouts(tiny_policy, eval_cfg, ControlConfig(budget_ms=10.0, auto_budget=True))
    # default candidates 2, 4, 8, 12, ... capped at K = 10: window 4 is still the fastest
    assert r.budget["calls"] == {2: 5, 4: 3, 8: 2, 10: 2}
    assert r.budget["expected_ms"] == pytest.approx(4.8)
    assert r.sampler.window == 4 and r.sampler.max_iters == 5
    assert tiny_policy.sampler == picard
