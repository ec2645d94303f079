"""The score-latency frontier of a set of samplers: which sampler wins at which latency budget (no torch).

Each sampler is one point: its mean score and its chunk latency. Walking the points from the fastest to
the slowest, a sampler joins the frontier when it scores more than ``score_tol`` above every faster
sampler on the frontier (the frontier's best so far): a slower sampler that is not clearly better than
the current winner is not worth its latency. A faster sampler off the frontier (within ``score_tol`` of
a winner) does not count: it would lose its budget to that winner anyway. For a latency budget B,
the winner is the frontier sampler with the highest score among those no slower than B; it changes only
at the frontier's latencies, so the budget axis splits into intervals, one winner each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from parapolicy.policy.control import plots  # matplotlib with the Agg backend

__all__ = ["FrontierPoint", "budget_winners", "format_frontier", "frontier_plot", "pareto_frontier"]


@dataclass(frozen=True)
class FrontierPoint:
    """One sampler: its name, mean score and chunk latency (ms)."""

    name: str
    score: float
    latency_ms: float


def _check(points: Sequence[FrontierPoint], score_tol: float) -> None:
    if score_tol < 0:
        raise ValueError(f"score_tol must be >= 0, got {score_tol}")
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise ValueError(f"frontier points need distinct names, got {names}")
    bad = [p.name for p in points if not (math.isfinite(p.score) and math.isfinite(p.latency_ms))]
    bad += [p.name for p in points if math.isfinite(p.latency_ms) and p.latency_ms <= 0]
    if bad:
        raise ValueError(f"frontier points need a finite score and a latency > 0 ms: {sorted(set(bad))}")


def pareto_frontier(points: Sequence[FrontierPoint], score_tol: float = 0.0) -> list[FrontierPoint]:
    """The frontier, fastest first: each point scores more than ``score_tol`` above the faster frontier
    points (the one before it).

    Ties in latency go to the higher score (then the name, for a deterministic order).
    """
    _check(points, score_tol)
    ordered = sorted(points, key=lambda p: (p.latency_ms, -p.score, p.name))
    frontier: list[FrontierPoint] = []
    for p in ordered:
        if not frontier or p.score > frontier[-1].score + score_tol:
            frontier.append(p)
    return frontier


def budget_winners(
    points: Sequence[FrontierPoint], score_tol: float = 0.0
) -> list[tuple[float, float, FrontierPoint]]:
    """``(from_ms, to_ms, winner)`` for budgets in [from_ms, to_ms) (the last ``to_ms`` is infinite)."""
    front = pareto_frontier(points, score_tol)
    ends = [p.latency_ms for p in front[1:]] + [math.inf]
    return [(p.latency_ms, end, p) for p, end in zip(front, ends, strict=True)]


def format_frontier(points: Sequence[FrontierPoint], score_tol: float = 0.0) -> str:
    """Plain-text verdict: which sampler wins at which chunk-latency budget, and who is off the frontier."""
    rows = budget_winners(points, score_tol)
    on = {p.name for _, _, p in rows}
    lines = [f"score-latency frontier (a slower sampler must score > {score_tol:g} more to win):"]
    lines.append(f"  budget < {rows[0][0]:.1f} ms: no sampler fits")
    for lo, hi, p in rows:
        span = f"{lo:.1f} ms <= budget" + (f" < {hi:.1f} ms" if math.isfinite(hi) else "")
        lines.append(f"  {span}: {p.name} (score {p.score:.3f}, {p.latency_ms:.1f} ms)")
    off = [p for p in sorted(points, key=lambda p: p.latency_ms) if p.name not in on]
    if off:
        lines.append(
            "  off the frontier: "
            + ", ".join(f"{p.name} ({p.score:.3f}, {p.latency_ms:.1f} ms)" for p in off)
        )
    return "\n".join(lines)


def frontier_plot(
    points: Sequence[FrontierPoint], path: str | Path, score_tol: float = 0.0, title: str = ""
) -> Path:
    """Mean score against chunk latency (log x), one labelled point per sampler, frontier as a step line."""
    plt = plots.plt
    front = pareto_frontier(points, score_tol)
    on = {p.name for p in front}
    fig, ax = plt.subplots(figsize=(8, 5))
    for p in points:
        ax.scatter(
            p.latency_ms,
            p.score,
            s=60 if p.name in on else 30,
            marker="o" if p.name in on else "x",
            color="C3" if p.name in on else "C0",
            zorder=3,
        )
        ax.annotate(p.name, (p.latency_ms, p.score), textcoords="offset points", xytext=(4, 4), fontsize=8)
    xs = [p.latency_ms for p in front]
    ys = [p.score for p in front]
    ax.step(
        xs + [max(p.latency_ms for p in points) * 1.5],
        ys + ys[-1:],
        where="post",
        color="C3",
        lw=1.5,
        label="frontier (best score within a latency budget)",
    )
    ax.set_xscale("log")
    ax.set_xlabel("chunk latency (ms, batch 1)")
    ax.set_ylabel("mean score")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title)
    return plots._save(fig, path)
