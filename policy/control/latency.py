"""Per-control-step latency records, percentiles, section timers and summaries (no hydra, no torch).

A rollout appends one row per control step (`timeline.py`) to a `StepLog` and one row per plan
(action chunk) to a `ChunkLog`. Both store their columns in growable numpy arrays (about 120 bytes per
step), so a 10,000-step soak holds about 1 MB of records and memory stays flat otherwise.

Step row:

- ``episode``, ``step``: episode index and control step (tick) within it.
- ``t_obs_ns``: when the decision this step's action came from started: the plan request for a
  ``fresh`` step, the step's own tick for every other step. ``t_ready_ns``: when its action was
  available. Both on the rollout's clock (``perf_counter_ns`` in ``frozen`` and ``wallclock``, the
  simulated tick clock in ``realtime_sim``).
- ``latency_ms`` = ``(t_ready_ns - t_obs_ns) / 1e6``: a fresh step costs its plan's latency, a queued
  step the controller's dequeue time (microseconds), a held or fallback step the time to make it.
- ``deadline_ns`` = ``t_obs_ns + budget_ms``; ``missed``: the step's action was late (latency over the
  budget) or the step had no planned action at all (``held``/``fallback`` on a miss or a fault).
- ``action_source``: ``fresh`` (first action taken from a newly arrived plan), ``queued`` (a later
  action of a plan), ``held`` (no plan action available: the last target is re-sent), ``fallback``
  (the task's safe action; PushT: hold the pusher where it is).
- ``chunk``: the plan the action came from (-1 for none); sampler statistics (``model_evals``,
  ``sequential_passes``, ``picard_iters``, ``converged``, ``final_residual``) are the plan's on its
  fresh step and empty on the others, so column sums are totals.
- ``ticks_late``: on a fresh step, the ticks between the plan's first tick and its first use (its rows
  dropped for being late; without ``control.forecast`` its first tick is its request's).
- ``env_ms``: the environment step's wall time; ``batch_rows``: episodes planned in the same call.
"""

from __future__ import annotations

import csv
import math
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from parapolicy.policy.atomic_write import write_atomically
from parapolicy.policy.control.faults import Fault

ACTION_SOURCES = ("fresh", "queued", "held", "fallback")
SOURCE_CODE = {name: i for i, name in enumerate(ACTION_SOURCES)}
SECTIONS = ("observation", "denoiser", "sampler", "controller", "env_step")
PERCENTILES = (50, 90, 99)


class ColumnLog:
    """Append-only table with typed numpy columns that grow by doubling.

    Args:
        columns: ``(name, numpy dtype)`` pairs, in output order.
        capacity: initial rows reserved.
    """

    def __init__(self, columns: Sequence[tuple[str, Any]], capacity: int = 1024) -> None:
        self._dtypes = {name: np.dtype(dtype) for name, dtype in columns}
        self._data = {name: np.zeros(capacity, dtype=dt) for name, dt in self._dtypes.items()}
        self._n = 0

    @property
    def names(self) -> tuple[str, ...]:
        """Column names in order."""
        return tuple(self._dtypes)

    def __len__(self) -> int:
        return self._n

    def append(self, **values: Any) -> None:
        """Add one row; every column must be given."""
        if self._n == len(next(iter(self._data.values()))):
            for name, arr in self._data.items():
                grown = np.zeros(2 * len(arr), dtype=arr.dtype)
                grown[: self._n] = arr[: self._n]
                self._data[name] = grown
        for name, arr in self._data.items():
            arr[self._n] = values[name]
        self._n += 1

    def extend(self, other: ColumnLog) -> None:
        """Append every row of ``other`` (same columns)."""
        if other.names != self.names:
            raise ValueError("cannot merge logs with different columns")
        for i in range(len(other)):
            self.append(**{name: other._data[name][i] for name in self.names})

    def column(self, name: str) -> np.ndarray:
        """A view of one column's filled rows."""
        return self._data[name][: self._n]

    def nbytes(self) -> int:
        """Bytes reserved by the columns."""
        return sum(arr.nbytes for arr in self._data.values())


STEP_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("episode", np.int32),
    ("step", np.int32),
    ("t_obs_ns", np.int64),
    ("t_ready_ns", np.int64),
    ("deadline_ns", np.int64),
    ("latency_ms", np.float64),
    ("budget_ms", np.float64),
    ("missed", np.bool_),
    ("action_source", np.int8),
    ("chunk", np.int32),
    ("model_evals", np.float32),
    ("sequential_passes", np.int32),
    ("picard_iters", np.int32),
    ("converged", np.int8),  # -1: not a fresh step
    ("final_residual", np.float32),  # NaN: not a fresh step
    ("ticks_late", np.int32),
    ("env_ms", np.float32),
    ("batch_rows", np.int16),
    ("action_change", np.float32),  # ‖action - previous action‖ (NaN on an episode's first step)
)

CHUNK_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("episode", np.int32),
    ("chunk", np.int32),
    ("request_step", np.int32),  # the tick it was requested at
    ("start_step", np.int32),  # its first tick (request + the forecast's d with control.forecast)
    ("ready_step", np.int32),
    ("latency_ms", np.float64),  # the latency that drove the timeline (measured or modelled)
    ("compute_ms", np.float64),  # measured wall time of the plan
    ("denoiser_ms", np.float64),
    ("observation_ms", np.float64),
    ("budget_ms", np.float64),
    ("over_budget", np.bool_),
    ("ticks_late", np.int32),  # ready - start: its rows for ticks already past, dropped
    ("delay_ticks", np.int32),  # ready - request: the realised delay
    ("batch_rows", np.int16),
    ("model_calls", np.int32),
    ("model_evals", np.float32),
    ("sequential_passes", np.int32),
    ("picard_iters", np.int32),
    ("converged", np.int8),
    ("final_residual", np.float32),
    ("warm_started", np.bool_),
    ("fault", np.int8),  # faults.Fault: 0 none, 1 non-finite output, 2 exception, 3 bad observation
    ("expected_delay", np.int32),  # ticks the controller expected the plan to take (-1: frozen)
    ("expected_latency_ms", np.float64),  # the latency estimate behind it
    ("inpainted_rows", np.int16),  # rows the plan was sampled to continue (weight 1), 0 with stitch=drop
)


class StepLog(ColumnLog):
    """One row per control step (see the module docstring for the columns)."""

    def __init__(self, capacity: int = 1024) -> None:
        super().__init__(STEP_COLUMNS, capacity)


class ChunkLog(ColumnLog):
    """One row per plan (action chunk)."""

    def __init__(self, capacity: int = 256) -> None:
        super().__init__(CHUNK_COLUMNS, capacity)


def _cell(name: str, value: Any) -> Any:
    if name == "action_source":
        return ACTION_SOURCES[int(value)]
    if name == "fault":
        return Fault(int(value)).label
    if name == "converged":
        return "" if value < 0 else bool(value)
    if isinstance(value, np.floating):
        return "" if math.isnan(value) else repr(float(value))
    if isinstance(value, np.bool_):
        return bool(value)
    return value.item() if isinstance(value, np.generic) else value


def write_csv(log: ColumnLog, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``log`` as CSV (header row first); ``extra`` adds constant columns (e.g. the sampler).

    Whole or not at all (`atomic_write.write_atomically`).
    """
    extra = extra or {}
    cols = {name: log.column(name) for name in log.names}

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([*log.names, *extra])
            for i in range(len(log)):
                writer.writerow([*(_cell(n, cols[n][i]) for n in log.names), *extra.values()])

    return write_atomically(path, write)


def percentiles(values: Iterable[float] | np.ndarray) -> dict[str, float | int | None]:
    """``{p50_ms, p90_ms, p99_ms, max_ms, mean_ms, n}`` of ``values`` (None for an empty input)."""
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64)
    if arr.size == 0:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None, "n": 0}
    out: dict[str, float | int | None] = {f"p{q}_ms": float(np.percentile(arr, q)) for q in PERCENTILES}
    out["max_ms"] = float(arr.max())
    out["mean_ms"] = float(arr.mean())
    out["n"] = int(arr.size)
    return out


class SectionTimer:
    """Accumulated wall time per section (observation, denoiser, sampler, controller, env_step)."""

    def __init__(self) -> None:
        self.total_ns = dict.fromkeys(SECTIONS, 0)
        self.count = dict.fromkeys(SECTIONS, 0)
        self._lock = threading.Lock()  # the wallclock planner thread adds concurrently

    def add(self, section: str, ns: int) -> None:
        """Add ``ns`` nanoseconds to ``section``."""
        with self._lock:
            self.total_ns[section] += int(ns)
            self.count[section] += 1

    def summary(self, n_steps: int) -> dict[str, dict[str, float | int]]:
        """Per section: total ms, share of the summed time, ms per control step, and event count."""
        grand = sum(self.total_ns.values()) or 1
        return {
            s: {
                "total_ms": self.total_ns[s] / 1e6,
                "share": self.total_ns[s] / grand,
                "ms_per_step": self.total_ns[s] / 1e6 / max(n_steps, 1),
                "count": self.count[s],
            }
            for s in SECTIONS
        }


def latency_summary(
    steps: StepLog,
    chunks: ChunkLog,
    budget_ms: float,
    warmup_ms: Sequence[float] = (),
    sections: SectionTimer | None = None,
) -> dict[str, Any]:
    """The ``latency`` block of ``eval_info.json``/``summary.json`` (warm-up plans are not in the logs).

    Returns:
        ``budget_ms``, ``p50_ms`` ... ``max_ms``, ``mean_ms``, ``miss_rate``,
        ``n_steps``, ``warmup_steps_excluded``) over control steps, plus ``chunk`` (percentiles of the plan
        latency and of its measured compute time), ``action_sources`` (step counts), ``warmup`` (the
        excluded warm-up plans), ``drift`` (median step latency of fresh steps, first vs last quarter)
        and, when given, ``sections``.
    """
    n = len(steps)
    lat = steps.column("latency_ms")
    missed = steps.column("missed")
    src = steps.column("action_source")
    out: dict[str, Any] = {"budget_ms": budget_ms, **percentiles(lat)}
    out.pop("n")
    out["miss_rate"] = float(missed.mean()) if n else 0.0
    out["n_missed"] = int(missed.sum())
    out["n_steps"] = n
    out["warmup_steps_excluded"] = len(warmup_ms)
    out["action_sources"] = {name: int((src == code).sum()) for name, code in SOURCE_CODE.items()}
    ok = chunks.column("fault") == 0
    out["chunk"] = {
        **percentiles(chunks.column("latency_ms")[ok]),
        "compute": percentiles(chunks.column("compute_ms")[ok]),
        "denoiser": percentiles(chunks.column("denoiser_ms")[ok]),
        "over_budget": int(chunks.column("over_budget")[ok].sum()),
        "n_faults": int((~ok).sum()),
        "mean_model_calls": float(chunks.column("model_calls")[ok].mean()) if ok.any() else None,
        "mean_model_evals": float(chunks.column("model_evals")[ok].mean()) if ok.any() else None,
        "mean_sequential_passes": float(chunks.column("sequential_passes")[ok].mean()) if ok.any() else None,
        "mean_picard_iters": float(chunks.column("picard_iters")[ok].mean()) if ok.any() else None,
        "converged_rate": float((chunks.column("converged")[ok] == 1).mean()) if ok.any() else None,
        "mean_ticks_late": float(chunks.column("ticks_late")[ok].mean()) if ok.any() else None,
        "delay": delay_accuracy(chunks),
    }
    out["warmup"] = {"n": len(warmup_ms), "latency_ms": [float(x) for x in warmup_ms]}
    out["drift"] = drift(steps)
    if sections is not None:
        out["sections"] = sections.summary(n)
    return out


def delay_accuracy(chunks: ChunkLog) -> dict[str, float | int | None]:
    """Expected against realised delay (ticks) over the plans that had an expectation (not frozen).

    Returns ``{n, mean_expected, mean_realised, underestimated, overestimated}`` (the last two as
    shares of those plans).
    """
    exp = chunks.column("expected_delay")
    keep = (exp >= 0) & (chunks.column("fault") == 0)
    real = chunks.column("delay_ticks")[keep]
    exp = exp[keep]
    if not keep.any():
        return {
            "n": 0,
            "mean_expected": None,
            "mean_realised": None,
            "underestimated": None,
            "overestimated": None,
        }
    return {
        "n": int(keep.sum()),
        "mean_expected": float(exp.mean()),
        "mean_realised": float(real.mean()),
        "underestimated": float((real > exp).mean()),
        "overestimated": float((real < exp).mean()),
    }


def drift(steps: StepLog) -> dict[str, float | None]:
    """Latency of fresh steps in the first and last quarter of the run: medians, 10th percentiles, ratios.

    The 10th-percentile ratio is the robust drift signal on a shared machine: foreign load slows some
    plans and moves the median, while growth inside the controller (a leak) slows every plan.
    """
    fresh = steps.column("latency_ms")[steps.column("action_source") == SOURCE_CODE["fresh"]]
    keys = ("first_quarter_p50_ms", "last_quarter_p50_ms", "ratio", "first_quarter_p10_ms")
    if fresh.size < 8:
        return dict.fromkeys((*keys, "last_quarter_p10_ms", "ratio_p10"))
    q = fresh.size // 4
    head, tail = fresh[:q], fresh[-q:]
    p50 = float(np.median(head)), float(np.median(tail))
    p10 = float(np.percentile(head, 10)), float(np.percentile(tail, 10))
    return {
        "first_quarter_p50_ms": p50[0],
        "last_quarter_p50_ms": p50[1],
        "ratio": p50[1] / p50[0] if p50[0] else None,
        "first_quarter_p10_ms": p10[0],
        "last_quarter_p10_ms": p10[1],
        "ratio_p10": p10[1] / p10[0] if p10[0] else None,
    }
