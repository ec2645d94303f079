"""Latency and reward plots of rollouts, as PNG files (matplotlib, Agg backend; no hydra, no torch).

Every function takes plain arrays keyed by a label (a sampler, or ``sampler/mode``), writes one figure
and returns its path. Nothing here needs a display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 110


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _budget_line(ax: plt.Axes, budget_ms: float | None, vertical: bool) -> None:
    if budget_ms is None:
        return
    if vertical:
        ax.axvline(budget_ms, color="red", ls="--", lw=1, label=f"budget {budget_ms:g} ms")
    else:
        ax.axhline(budget_ms, color="red", ls="--", lw=1, label=f"budget {budget_ms:g} ms")


def latency_cdf(
    step_ms: Mapping[str, np.ndarray],
    chunk_ms: Mapping[str, np.ndarray],
    path: str | Path,
    budget_ms: float | None = None,
    title: str = "",
) -> Path:
    """Empirical CDFs of per-step latency (left) and per-chunk latency (right), log-scaled x axis."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, data, what in ((axes[0], step_ms, "control step"), (axes[1], chunk_ms, "chunk (plan)")):
        for label, values in data.items():
            v = np.sort(np.asarray(values, dtype=float))
            if v.size == 0:
                continue
            v = np.maximum(v, 1e-3)  # queued steps take microseconds; keep them on the log axis
            ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", label=label)
        _budget_line(ax, budget_ms, vertical=True)
        ax.set_xscale("log")
        ax.set_xlabel(f"{what} latency (ms)")
        ax.set_ylabel("fraction <= x")
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title or "latency CDF")
    return _save(fig, path)


def latency_hist(
    chunk_ms: Mapping[str, np.ndarray], path: str | Path, budget_ms: float | None = None, title: str = ""
) -> Path:
    """Histogram of plan (chunk) latencies per label on shared bins."""
    fig, ax = plt.subplots(figsize=(7, 4))
    allv = np.concatenate([np.asarray(v, dtype=float) for v in chunk_ms.values() if len(v)] or [np.zeros(1)])
    bins = np.linspace(0.0, max(float(allv.max()), budget_ms or 0.0) * 1.05 + 1e-6, 50)
    for label, values in chunk_ms.items():
        if len(values):
            ax.hist(np.asarray(values, dtype=float), bins=bins, alpha=0.55, label=label)
    _budget_line(ax, budget_ms, vertical=True)
    ax.set_xlabel("chunk latency (ms)")
    ax.set_ylabel("plans")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "plan latency")
    return _save(fig, path)


def latency_timeline(
    series: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    path: str | Path,
    budget_ms: float | None = None,
    title: str = "",
) -> Path:
    """Per-step latency against the step index, one panel per label; missed steps marked in red.

    Args:
        series: label -> (step index, latency ms, missed bool), e.g. the first episodes of a run.
        path: output PNG.
        budget_ms: drawn as a horizontal line.
        title: figure title.
    """
    n = max(1, len(series))
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.4 * n), sharex=True, squeeze=False)
    for ax, (label, (idx, lat, missed)) in zip(axes[:, 0], series.items(), strict=False):
        idx, lat, missed = np.asarray(idx), np.asarray(lat, dtype=float), np.asarray(missed, dtype=bool)
        ax.plot(idx, np.maximum(lat, 1e-3), lw=0.8, marker=".", ms=3, label=label)
        if missed.any():
            ax.plot(idx[missed], np.maximum(lat[missed], 1e-3), "rx", ms=5, label="missed")
        _budget_line(ax, budget_ms, vertical=False)
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("control step")
    fig.suptitle(title or "per-step latency")
    return _save(fig, path)


def episode_rewards(rewards: Mapping[str, Sequence[float]], path: str | Path, title: str = "") -> Path:
    """Per-episode max reward (the reference score) for each label, with each label's mean."""
    fig, ax = plt.subplots(figsize=(10, 4))
    labels = list(rewards)
    width = 0.8 / max(1, len(labels))
    for k, label in enumerate(labels):
        r = np.asarray(rewards[label], dtype=float)
        x = np.arange(r.size) + (k - (len(labels) - 1) / 2) * width
        ax.bar(x, r, width=width, label=f"{label} (mean {r.mean():.3f})" if r.size else label)
    ax.set_xlabel("episode")
    ax.set_ylabel("max reward")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    ax.set_title(title or "per-episode reward")
    return _save(fig, path)


def sequential_vs_parallel(
    baseline: Sequence[float],
    others: Mapping[str, Sequence[float]],
    path: str | Path,
    baseline_label: str = "sequential",
    title: str = "",
) -> Path:
    """Scatter of per-episode max reward: the baseline (x) against each other label (y)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    x = np.asarray(baseline, dtype=float)
    for label, values in others.items():
        y = np.asarray(values, dtype=float)
        m = min(x.size, y.size)
        ax.scatter(x[:m], y[:m], s=18, alpha=0.7, label=label)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"{baseline_label}: max reward")
    ax.set_ylabel("other sampler: max reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "per-episode reward, same seeds and noise")
    return _save(fig, path)
