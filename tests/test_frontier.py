"""Score-latency frontier: membership with a score tolerance, budget intervals, text and plot."""

from __future__ import annotations

import math

import pytest

from parapolicy.policy.control.frontier import (
    FrontierPoint,
    budget_winners,
    format_frontier,
    frontier_plot,
    pareto_frontier,
)

POINTS = [
    FrontierPoint("ddpm-100", 0.992, 667.0),
    FrontierPoint("paraddpm", 0.980, 248.0),
    FrontierPoint("ddim-16", 0.980, 99.0),
    FrontierPoint("ddim-8", 1.000, 50.0),
    FrontierPoint("dpm-10", 0.979, 62.0),
    FrontierPoint("dpm-5", 0.950, 33.0),
]


def test_frontier_fastest_first_and_strictly_better():
    assert [p.name for p in pareto_frontier(POINTS)] == ["dpm-5", "ddim-8"]
    # a better slower sampler joins; an equal one does not
    pts = [*POINTS, FrontierPoint("slow-best", 1.0, 900.0), FrontierPoint("slower-better", 1.001, 950.0)]
    assert [p.name for p in pareto_frontier(pts)] == ["dpm-5", "ddim-8", "slower-better"]


def test_score_tolerance_keeps_the_faster_sampler():
    pts = [FrontierPoint("fast", 0.98, 30.0), FrontierPoint("slow", 0.985, 600.0)]
    assert [p.name for p in pareto_frontier(pts, score_tol=0.0)] == ["fast", "slow"]
    assert [p.name for p in pareto_frontier(pts, score_tol=0.01)] == ["fast"]
    # the tolerance is over the frontier's best so far: B is within it of A, so C is compared with A
    abc = [FrontierPoint("A", 0.500, 10.0), FrontierPoint("B", 0.505, 20.0), FrontierPoint("C", 0.512, 30.0)]
    assert [p.name for p in pareto_frontier(abc, score_tol=0.01)] == ["A", "C"]


def test_equal_latency_goes_to_the_higher_score():
    pts = [FrontierPoint("a", 0.9, 10.0), FrontierPoint("b", 0.95, 10.0)]
    assert [p.name for p in pareto_frontier(pts)] == ["b"]


def test_budget_intervals_and_text():
    rows = budget_winners(POINTS)
    assert [(lo, hi, p.name) for lo, hi, p in rows] == [(33.0, 50.0, "dpm-5"), (50.0, math.inf, "ddim-8")]
    text = format_frontier(POINTS)
    assert "budget < 33.0 ms: no sampler fits" in text
    assert "33.0 ms <= budget < 50.0 ms: dpm-5" in text
    assert "50.0 ms <= budget: ddim-8 (score 1.000, 50.0 ms)" in text
    assert "off the frontier: dpm-10 (0.979, 62.0 ms), ddim-16" in text


def test_bad_points():
    with pytest.raises(ValueError, match="distinct names"):
        pareto_frontier([FrontierPoint("a", 1.0, 1.0), FrontierPoint("a", 0.5, 2.0)])
    with pytest.raises(ValueError, match=r"latency > 0 ms: \['b'\]"):
        pareto_frontier([FrontierPoint("a", 1.0, 1.0), FrontierPoint("b", 0.5, 0.0)])
    with pytest.raises(ValueError, match=r"finite score.*\['c'\]"):
        pareto_frontier([FrontierPoint("c", math.nan, 1.0)])
    with pytest.raises(ValueError, match="score_tol"):
        pareto_frontier(POINTS, score_tol=-0.1)


def test_frontier_plot_writes_png(tmp_path):
    path = frontier_plot(POINTS, tmp_path / "plots" / "frontier.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
