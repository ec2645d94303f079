"""compare's verdicts on hand-made results (no rollouts): the sign of each score difference, the frozen
tolerance, the direction of a paired difference, the mode the frontier scores, and which runs batch."""

from __future__ import annotations

import types

import pytest

from parapolicy.policy import compare
from parapolicy.policy.compare import CompareConfig


class _Tree(dict):
    """A nested record whose missing keys read as empty records."""

    def __missing__(self, key):
        return _Tree()


def result(rewards: list[float]):
    episodes = [{"seed": 100000 + i, "max_reward": r, "success": r > 0.95} for i, r in enumerate(rewards)]
    aggregated = _Tree(mean_score=sum(rewards) / len(rewards), smoothness={})
    sampler = types.SimpleNamespace(is_parallel=False)
    return types.SimpleNamespace(
        aggregated=aggregated, latency=_Tree(), per_episode=episodes, sampler=sampler
    )


@pytest.fixture
def setup():
    # realtime_sim listed first: the frontier must still score the frozen runs
    cfg = CompareConfig(
        run=["sequential", "paraddpm"], baseline="sequential", modes=["realtime_sim", "frozen"]
    )
    rewards = {
        ("sequential", "frozen"): [0.8, 0.8],
        ("paraddpm", "frozen"): [0.75, 0.75],  # 0.05 below the baseline
        ("sequential", "realtime_sim"): [0.6, 0.6],
        ("paraddpm", "realtime_sim"): [0.9, 0.9],  # 0.3 above it, seed by seed
    }
    labels = compare.run_labels(cfg)
    return cfg, {name: {label: result(rewards[(name, label)]) for label in labels} for name in cfg.run}


def test_score_differences_are_sampler_minus_baseline_and_the_frozen_check_is_two_sided(setup):
    cfg, results = setup
    rows = compare._table_rows(cfg, results)
    diff = {(r["sampler"], r["mode"]): r["score_diff_vs_baseline"] for r in rows}
    assert diff[("paraddpm", "frozen")] == pytest.approx(-0.05)
    assert diff[("paraddpm", "realtime_sim")] == pytest.approx(0.3)
    assert compare._checks(cfg, rows)["frozen_score_within_tolerance"]["ok"] is False  # |-0.05| > 0.03


def test_a_paired_difference_is_this_sampler_minus_the_baseline_seed_by_seed(setup):
    cfg, results = setup
    pairs = compare.paired_differences(cfg, results)
    (realtime,) = [p for p in pairs if p["sampler"] == "paraddpm" and p["label"] == "realtime_sim"]
    assert realtime["mean_score_diff"] == pytest.approx(0.3)


def test_the_frontier_scores_the_frozen_runs_whatever_the_mode_order(setup):
    cfg, results = setup
    frontier = compare.frontier_summary(cfg, results, {"sequential": [10.0, 11.0], "paraddpm": [5.0, 6.0]})
    assert frontier["score_mode"] == "frozen"


def test_only_fixed_latency_runs_are_batched_in_real_time():
    cfg = CompareConfig(run=["sequential", "paraddpm"], modes=["realtime_sim"], realtime_batch=4)
    assert {ec.batch_size for _, _, ec, _ in compare._runs(cfg)} == {1}  # measured latency: one at a time
