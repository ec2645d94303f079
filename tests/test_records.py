"""Typed rollout records (`policy/control/records.py`, `faults.py`): the JSON schema and the fault codes."""

from __future__ import annotations

import numpy as np
import pytest

from parapolicy.policy.control.faults import Fault
from parapolicy.policy.control.latency import (
    SOURCE_CODE,
    ChunkLog,
    StepLog,
    drift,
    latency_summary,
    write_csv,
)
from parapolicy.policy.control.records import EpisodeRecord, Plan

# the per_episode keys of eval_info.json, in order (the schema before the records were typed)
EPISODE_KEYS = [
    "episode_ix", "seed", "max_reward", "sum_reward", "success", "n_steps", "final_coverage",
    "deadline_misses", "held_steps", "fallback_steps", "fresh_steps", "queued_steps", "tail_steps",
    "ticks_lost", "n_chunks", "nan_chunks", "denoiser_errors", "observation_errors", "pacing_overruns",
    "stopped", "stop_reason", "stop_step", "video_path",
    # added with the smoothness metrics (policy/control/smoothness.py)
    "mean_change", "max_change", "boundary_mean_change", "boundary_max_change",
]  # fmt: skip


def test_episode_record_keeps_the_eval_info_schema():
    rec = EpisodeRecord(episode_ix=3, seed=100003, final_coverage=0.25)
    assert list(rec.as_dict()) == EPISODE_KEYS
    rec.add_step(0.5, 0.4, False)
    rec.add_step(0.2, 0.1, True)
    for source in ("fresh", "queued", "queued", "held", "fallback"):
        rec.count_source(source)
    rec.count_fault(Fault.NAN)
    rec.stop("deadline_miss", 2)
    d = rec.as_dict()
    assert (d["n_steps"], d["max_reward"], d["sum_reward"], d["final_coverage"], d["success"]) == (
        2, 0.5, 0.7, 0.1, True,
    )  # fmt: skip
    assert (d["fresh_steps"], d["queued_steps"], d["held_steps"], d["fallback_steps"]) == (1, 2, 1, 1)
    assert d["nan_chunks"] == 1 and (d["stopped"], d["stop_reason"], d["stop_step"]) == (
        True,
        "deadline_miss",
        2,
    )
    with pytest.raises(ValueError, match="unknown action source"):
        rec.count_source("late")
    rec.set_smoothness(
        {"mean_change": 1.5, "max_change": 4.0, "boundary_mean_change": 2.0, "boundary_max_change": 3.0}
    )
    assert (rec.mean_change, rec.max_change, rec.boundary_mean_change, rec.boundary_max_change) == (
        1.5,
        4.0,
        2.0,
        3.0,
    )


def test_fault_codes_labels_and_counters():
    assert [int(f) for f in Fault] == [0, 1, 2, 3]
    assert [f.label for f in Fault] == ["", "nan", "error", "observation"]
    assert [f.counter for f in Fault if f] == ["nan_chunks", "denoiser_errors", "observation_errors"]
    with pytest.raises(ValueError, match="counts nothing"):
        _ = Fault.NONE.counter


def test_a_plan_fills_every_chunk_column_and_the_csv_names_its_fault(tmp_path):
    plan = Plan(
        chunk=2, start=16, actions=None, fault=Fault.ERROR, latency_ms=120.0, compute_ms=110.0,
        denoiser_ms=0.0, observation_ms=0.0, t_obs_ns=0, t_ready_ns=1, batch_rows=1, lead=3,
    )  # fmt: skip
    log = ChunkLog()
    row = plan.chunk_row(episode=1, ready_step=18, budget_ms=100.0)
    assert list(row) == list(log.names)
    log.append(**row)
    assert row["over_budget"] and np.isnan(row["final_residual"])
    # requested at tick 13 for ticks 16 on (a forecast 3 ticks ahead), installed at 18
    assert (row["request_step"], row["start_step"], row["ticks_late"], row["delay_ticks"]) == (13, 16, 2, 5)
    text = write_csv(log, tmp_path / "chunks.csv").read_text().splitlines()
    header, cells = text[0].split(","), text[1].split(",")
    assert cells[header.index("fault")] == "error"
    assert cells[header.index("expected_delay")] == "-1" and cells[header.index("inpainted_rows")] == "0"


def test_the_chunk_summary_counts_plans_over_budget_among_the_plans_it_counts():
    """A fault plan is not in the chunk percentiles' n, so it is not among those over the budget either."""
    log = ChunkLog()
    for chunk, (fault, ms) in enumerate([(Fault.NONE, 120.0), (Fault.NAN, 130.0), (Fault.NONE, 50.0)]):
        plan = Plan(
            chunk=chunk, start=8 * chunk, actions=None, fault=fault, latency_ms=ms, compute_ms=ms,
            denoiser_ms=0.0, observation_ms=0.0, t_obs_ns=0, t_ready_ns=1, batch_rows=1,
        )  # fmt: skip
        log.append(**plan.chunk_row(episode=0, ready_step=8 * chunk + 1, budget_ms=100.0))
    chunk = latency_summary(StepLog(), log, budget_ms=100.0)["chunk"]
    assert (chunk["n"], chunk["over_budget"], chunk["n_faults"]) == (2, 1, 1)


def test_drift_compares_the_first_and_the_last_quarter_of_fresh_steps():
    log = StepLog()
    for i in range(16):  # fresh latencies 1 .. 16 ms, a queued step between each (not counted)
        for source, ms in (("fresh", i + 1.0), ("queued", 1000.0)):
            cols = dict.fromkeys(log.names, 0)
            cols.update(step=2 * i, action_source=SOURCE_CODE[source], latency_ms=ms)
            log.append(**cols)
    d = drift(log)  # quarters: 1-4 and 13-16
    assert (d["first_quarter_p50_ms"], d["last_quarter_p50_ms"], d["ratio"]) == (2.5, 14.5, 5.8)
    assert d["first_quarter_p10_ms"] == pytest.approx(1.3) and d["last_quarter_p10_ms"] == pytest.approx(13.3)


def test_an_episode_that_succeeded_once_stays_a_success():
    """A task that does not end on success (unlike PushT) still counts the episode a success."""
    rec = EpisodeRecord(episode_ix=0, seed=1)
    rec.add_step(0.96, 0.96, True)
    rec.add_step(0.5, 0.5, False)
    assert rec.as_dict()["success"] is True
