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


def delay_sweep(rows: Sequence[Mapping], path: str | Path, title: str = "") -> Path:
    """Mean score (left) and success rate (right) against the plan delay, one line per sampler x stitching.

    Args:
        rows: table rows (``parapolicy-compare``'s ``table``): ``sampler``, ``mode``, ``stitch``,
            ``delay_ms`` (the fixed latency of a ``realtime_sim`` run, None otherwise), ``mean_score``,
            ``pc_success``, ``pc_success_ci95``. ``frozen`` rows are drawn as dashed horizontal lines.
        path: the PNG to write.
        title: figure title.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    lines: dict[str, list[Mapping]] = {}
    for r in rows:
        if r.get("delay_ms") is not None:
            lines.setdefault(f"{r['sampler']} / {r.get('stitch') or 'drop'}", []).append(r)
    for ax, key, what in ((axes[0], "mean_score", "mean score"), (axes[1], "pc_success", "success (%)")):
        for label, pts in lines.items():
            pts = sorted(pts, key=lambda r: r["delay_ms"])
            x = [r["delay_ms"] for r in pts]
            y = [r[key] for r in pts]
            if key == "pc_success":
                # an all-success cell's Wilson bound can round a hair below 100: clip to >= 0
                lo = [max(0.0, r[key] - r["pc_success_ci95"][0]) for r in pts]
                hi = [max(0.0, r["pc_success_ci95"][1] - r[key]) for r in pts]
                ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=label)
            else:
                ax.plot(x, y, marker="o", label=label)
        for r in rows:
            if r["mode"] == "frozen":
                ax.axhline(r[key], ls="--", lw=1, color="grey")
                ax.annotate(
                    f"{r['sampler']} frozen", (0.01, r[key]), xycoords=("axes fraction", "data"), fontsize=7
                )
        ax.set_xlabel("plan latency (ms), fixed latency model")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "closed-loop quality against plan delay")
    return _save(fig, path)
