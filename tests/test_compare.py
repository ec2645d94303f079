"""The comparison and profiling jobs (`policy/compare.py`, `policy/profile.py`) and their CLIs."""

from __future__ import annotations

import csv
import dataclasses
import json
import statistics
import subprocess
import sys

import pytest

import parapolicy.policy.compare as compare_module
from parapolicy.policy.compare import (
    PARADDPM,
    CompareConfig,
    SamplerEntry,
    _checks,
    format_report,
    format_table,
    run_compare,
)
from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.control.evaluation import EvalConfig, paired_difference, wilson_interval
from parapolicy.policy.control.plots import delay_sweep
from parapolicy.policy.control.rollout import ControlConfig
from parapolicy.policy.model.checkpoint import CheckpointError
from parapolicy.policy.profile import ProfileConfig, format_profile, run_profile

PNG = b"\x89PNG"
STEP_COLUMNS = [
    "episode",
    "step",
    "t_obs_ns",
    "t_ready_ns",
    "deadline_ns",
    "latency_ms",
    "budget_ms",
    "missed",
    "action_source",
    "chunk",
    "model_evals",
    "sequential_passes",
    "picard_iters",
    "converged",
    "final_residual",
]


def small_compare(checkpoint, **kw) -> CompareConfig:
    samplers = {
        "sequential": SamplerEntry(SamplerConfig(num_inference_steps=10), latency_model="fixed:550"),
        "paraddpm": SamplerEntry(
            SamplerConfig(num_inference_steps=10, algorithm="picard", window=4, warm_start=True),
            latency_model="fixed:150",
        ),
    }
    base = {
        "policy_path": str(checkpoint),
        "samplers": samplers,
        "run": ["sequential", "paraddpm"],
        "eval": EvalConfig(n_episodes=3, batch_size=3, max_steps=16, max_videos=1, progress=False),
        "realtime_episodes": 2,
        "control": ControlConfig(warmup_plans=1),
    }
    return CompareConfig(**{**base, **kw})


def test_compare_writes_table_json_eval_info_csvs_plots_videos(checkpoint, tmp_path):
    out = tmp_path / "run"
    summary = run_compare(small_compare(checkpoint), out)

    data = json.loads((out / "compare.json").read_text())
    assert data["baseline"] == "sequential"
    rows = {(r["sampler"], r["mode"]): r for r in data["table"]}
    assert set(rows) == {(s, m) for s in ("sequential", "paraddpm") for m in ("frozen", "realtime_sim")}
    for r in rows.values():
        for key in ("mean_score", "pc_success_ci95", "step_p50_ms", "step_p99_ms", "step_max_ms"):
            assert r[key] is not None, key
        assert r["chunk_p50_ms"] > 0 and r["model_calls_per_chunk"] > 0 and r["speedup"] > 0
    for mode in ("frozen", "realtime_sim"):  # speedup: baseline compute p50 over this sampler's
        base, para = rows[("sequential", mode)], rows[("paraddpm", mode)]
        assert para["speedup"] == pytest.approx(base["chunk_compute_p50_ms"] / para["chunk_compute_p50_ms"])
    assert (
        rows[("sequential", "frozen")]["n_episodes"] == 3
        and rows[("paraddpm", "realtime_sim")]["n_episodes"] == 2
    )
    # the table shows why a slow sampler loses in real time: latency and ticks lost
    seq_rt, par_rt = rows[("sequential", "realtime_sim")], rows[("paraddpm", "realtime_sim")]
    assert seq_rt["chunk_p50_ms"] == 550.0 and par_rt["chunk_p50_ms"] == 150.0
    assert seq_rt["ticks_lost_per_episode"] > par_rt["ticks_lost_per_episode"] > 0
    assert rows[("paraddpm", "frozen")]["iters_per_chunk"] > 0
    assert "frozen_score_within_tolerance" in data["checks"]
    assert data["runs"]["paraddpm"]["realtime_sim"]["latency"]["warmup"]["n"] == 1
    # the frontier: frozen scores against the medians of the interleaved latency rounds (batch 1)
    fr = data["frontier"]
    assert fr["score_mode"] == "frozen" and fr["score_tol"] == 0.01
    points = {p["name"]: p for p in fr["points"]}
    assert points["paraddpm"]["score"] == rows[("paraddpm", "frozen")]["mean_score"]
    for name, ms in fr["latency_rounds_ms"].items():
        assert len(ms) == 3 and min(ms) > 0 and points[name]["latency_ms"] == statistics.median(ms)
    fastest = min(points.values(), key=lambda p: p["latency_ms"])
    assert fr["frontier"][0] == fastest["name"] and fr["winners"][0]["from_ms"] == fastest["latency_ms"]
    assert fr["winners"][-1]["to_ms"] is None and "score-latency frontier" in fr["text"]
    assert (out / "plots" / "frontier.png").read_bytes()[:4] == PNG

    for name in ("sequential", "paraddpm"):
        info = json.loads((out / name / "eval_info.json").read_text())
        assert info["mode"] == "frozen" and len(info["per_episode"]) == 3
        assert {"avg_sum_reward", "avg_max_reward", "pc_success", "pc_success_ci95", "mean_score"} <= set(
            info["aggregated"]
        )
        assert {
            "budget_ms",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "max_ms",
            "mean_ms",
            "miss_rate",
            "n_steps",
        } <= set(info["latency"])
        assert len(info["by_mode"]["realtime_sim"]["per_episode"]) == 2
        assert info["per_episode"][0]["seed"] == 100000
        for mode in ("frozen", "realtime_sim"):
            with (out / name / "latency" / f"steps_{mode}.csv").open() as fh:
                header = next(csv.reader(fh))
            assert header[: len(STEP_COLUMNS)] == STEP_COLUMNS and header[-2:] == ["sampler", "mode"]
            assert (out / name / "latency" / f"chunks_{mode}.csv").exists()
    for png in (
        "latency_cdf",
        "latency_hist",
        "latency_timeline",
        "episode_reward",
        "seq_vs_parallel_frozen",
    ):
        assert (out / "plots" / f"{png}.png").read_bytes()[:4] == PNG, png
    videos = sorted(p.name for p in (out / "videos").iterdir())
    assert videos == sorted(
        f"{s}_{m}_episode_0.mp4" for s in ("sequential", "paraddpm") for m in ("frozen", "realtime_sim")
    )
    table = format_table(summary["table"])
    assert "step p50/p90/p99/max ms" in table and "paraddpm" in table and "lost/ep" in table


def test_an_interrupted_compare_keeps_the_runs_it_finished(checkpoint, tmp_path, monkeypatch, capsys):
    """Each run's records are written as it finishes: Ctrl-C in the fourth run keeps the first three."""
    real, calls = compare_module.run_rollouts, []

    def interrupt_the_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(compare_module, "run_rollouts", interrupt_the_fourth)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_compare(small_compare(checkpoint, eval=EvalConfig(n_episodes=2, batch_size=2, max_steps=8)), out)
    assert not (out / "compare.json").exists()  # only a finished comparison writes it
    assert "interrupted after 3 of 4 runs; the finished runs' records are in" in capsys.readouterr().err

    def interrupt_at_once(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_module, "run_rollouts", interrupt_at_once)
    with pytest.raises(KeyboardInterrupt):
        run_compare(small_compare(checkpoint), tmp_path / "none")
    assert "interrupted after 0 of 4 runs; no run finished, nothing was written" in capsys.readouterr().err
    seq = json.loads((out / "sequential" / "eval_info.json").read_text())  # frozen, then realtime_sim
    assert seq["mode"] == "frozen" and set(seq["by_mode"]) == {"realtime_sim"}
    assert [e["seed"] for e in seq["per_episode"]] == [100000, 100001]
    para = json.loads((out / "paraddpm" / "eval_info.json").read_text())  # frozen only
    assert para["mode"] == "frozen" and para["by_mode"] == {} and len(para["per_episode"]) == 2
    assert sorted(p.name for p in (out / "paraddpm" / "latency").iterdir()) == [
        "chunks_frozen.csv",
        "steps_frozen.csv",
    ]
    assert not list(out.rglob(".*.tmp"))


def test_compare_same_seeds_and_noise_give_matching_frozen_scores(checkpoint, tmp_path):
    """ParaDDPM at a tight tolerance, warm-started, with fresh noise reproduces sequential's scores."""
    cfg = small_compare(
        checkpoint,
        modes=["frozen"],
        eval=EvalConfig(n_episodes=2, batch_size=2, max_steps=16, max_videos=0, progress=False),
    )
    cfg.samplers["paraddpm"].sampler = dataclasses.replace(cfg.samplers["paraddpm"].sampler, tol=1e-6)
    data = run_compare(cfg, tmp_path / "run")
    check = data["checks"]["frozen_score_within_tolerance"]
    assert check["ok"] and abs(check["diff_vs_baseline"]["paraddpm"]) < 1e-4
    (pair,) = data["paired"]  # paraddpm against the baseline, episode by episode
    assert (pair["sampler"], pair["label"]) == ("paraddpm", "frozen")
    assert (pair["against_sampler"], pair["against_label"]) == ("sequential", "frozen")
    assert pair["n_episodes"] == 2
    assert pair["mean_score_diff"] == pytest.approx(check["diff_vs_baseline"]["paraddpm"], abs=1e-12)
    assert not [n for n in data["notes"] if "noise" in n]  # identical noise: nothing to flag
    assert any("batched calls" in n for n in data["notes"])
    # frozen scores alone still get a frontier: its latencies come from the interleaved rounds
    assert data["frontier"]["score_mode"] == "frozen"
    assert set(data["frontier"]["latency_rounds_ms"]) == {"sequential", "paraddpm"}


def test_compare_notes_when_noise_differs(checkpoint, tmp_path):
    cfg = small_compare(checkpoint, modes=["frozen"])
    crn = SamplerConfig(
        num_inference_steps=10, algorithm="picard", window=4, warm_start=True, common_random_numbers=True
    )
    cfg.samplers["paraddpm"] = SamplerEntry(crn)
    cfg.eval = dataclasses.replace(cfg.eval, n_episodes=1, batch_size=1, max_videos=0)
    cfg.frontier_rounds = 0  # no latency pass, no frontier
    data = run_compare(cfg, tmp_path / "run")
    assert any("common_random_numbers" in n for n in data["notes"])
    assert data["frontier"] is None and not (tmp_path / "run" / "plots" / "frontier.png").exists()


def test_compare_refuses_to_overwrite_a_run(checkpoint, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "compare.json").write_text("{}")
    with pytest.raises(FileExistsError, match="never overwritten"):
        run_compare(small_compare(checkpoint), out)


def test_default_run_has_the_few_step_solvers_and_their_picard_versions():
    cfg = CompareConfig()
    assert cfg.run == [
        "sequential",
        "paraddpm",
        "dpmsolver5",
        "paradpmsolver5",
        "dpmsolver10",
        "paradpmsolver10",
        "ddim8",
        "paraddim8",
        "ddim16",
        "paraddim16",
    ]
    s = {n: cfg.samplers[n].sampler for n in cfg.run}
    assert (s["dpmsolver5"].kind, s["dpmsolver5"].num_inference_steps, s["dpmsolver5"].algorithm) == (
        "dpmsolver++",
        5,
        "sequential",
    )
    assert (s["paraddim16"].kind, s["paraddim16"].window, s["paraddim16"].algorithm) == ("ddim", 16, "picard")
    assert s["paraddpm"] == PARADDPM and s["paraddpm"].num_inference_steps == 100
    assert cfg.samplers["paraddpm_warm"].sampler.update == PARADDPM.update
    assert cfg.eval.n_episodes == 50  # the 50 reference seeds stay frozen
    with pytest.raises(ValueError, match="frontier_score_tol"):
        CompareConfig(frontier_score_tol=-1.0)
    with pytest.raises(ValueError, match="frontier_rounds must be >= 0, got -1"):
        CompareConfig(frontier_rounds=-1)


def test_compare_missing_checkpoint_fails_clearly(tmp_path):
    cfg = small_compare(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"cannot load policy_path=.*nowhere.*does not exist"):
        run_compare(cfg, tmp_path / "run")


def test_compare_impossible_settings_fail_at_start(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="n_action_steps=40 must be <="):
        run_compare(small_compare(checkpoint, control=ControlConfig(n_action_steps=40)), tmp_path / "a")
    assert not (tmp_path / "a" / "sequential").exists()  # nothing ran
    with pytest.raises(ValueError, match="baseline='ddim' is not one of run"):
        small_compare(checkpoint, baseline="ddim")
    with pytest.raises(ValueError, match="run must list distinct sampler names"):
        small_compare(checkpoint, run=["sequential", "nope"])
    with pytest.raises(ValueError, match="realtime_episodes must be in"):
        small_compare(checkpoint, realtime_episodes=7)
    with pytest.raises(ValueError, match="modes must be distinct values"):
        small_compare(checkpoint, modes=["frozen", "frozen"])
    with pytest.raises(ValueError, match="control.latency_model must be"):
        SamplerEntry(latency_model="fast")


def test_profile_writes_step_csv_summary_with_sections_and_plots(checkpoint, tmp_path):
    out = tmp_path / "run"
    cfg = ProfileConfig(
        policy_path=str(checkpoint),
        sampler=SamplerConfig(num_inference_steps=10, algorithm="picard", window=4, warm_start=True),
        control=ControlConfig(mode="realtime_sim", warmup_plans=2),
        eval=EvalConfig(n_episodes=2, batch_size=1, max_steps=16, max_videos=0, progress=False),
    )
    summary = run_profile(cfg, out)
    with (out / "latency" / "steps.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[: len(STEP_COLUMNS)] == STEP_COLUMNS and "world_size" in rows[0]
    assert len(rows) == 32 and {r["action_source"] for r in rows} <= {"fresh", "queued", "held", "fallback"}
    data = json.loads((out / "latency" / "summary.json").read_text())
    lat = data["latency"]
    assert set(lat["sections"]) == {"observation", "denoiser", "sampler", "controller", "env_step"}
    assert all(v["total_ms"] >= 0 for v in lat["sections"].values())
    assert lat["warmup_steps_excluded"] == 2 and lat["n_steps"] == 32
    assert {"p50_ms", "p90_ms", "p99_ms", "max_ms", "miss_rate"} <= set(lat) and lat["chunk"]["n"] > 0
    assert (out / "eval_info.json").exists() and (out / "latency" / "chunks.csv").exists()
    for png in ("latency_hist", "latency_cdf", "latency_timeline"):
        assert (out / "plots" / f"{png}.png").read_bytes()[:4] == PNG
    text = format_profile(summary)
    assert "per step" in text and "sections" in text and "warm-up" in text
    with pytest.raises(FileExistsError, match="results are never overwritten"):
        run_profile(cfg, out)


def cli(module: str, *args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_compare_and_profile_entry_points(checkpoint, tmp_path):
    common = [
        f"policy_path={checkpoint}",
        "eval.max_steps=8",
        "eval.max_videos=0",
        "control.warmup_plans=0",
        "num_threads=1",
    ]
    proc = cli(  # progress on: one plain line per run on stderr (no bar: stderr is not a terminal)
        "parapolicy.scripts.compare",
        *common,
        "eval.n_episodes=2",
        "eval.batch_size=2",
        "realtime_episodes=1",
        "samplers.sequential.sampler.num_inference_steps=5",
        "samplers.sequential.sampler.window=1",
        "samplers.paraddpm.sampler.num_inference_steps=5",
        "samplers.paraddpm.sampler.window=4",
        "run=[sequential,paraddpm]",
        "plots=false",
        f"hydra.run.dir={tmp_path / 'cmp'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "step p50/p90/p99/max ms" in proc.stdout and "frozen mean score vs sequential" in proc.stdout
    assert "score-latency frontier" in proc.stdout and "ms <= budget" in proc.stdout
    assert "compare [4/4] realtime_sim paraddpm: score" in proc.stderr  # one progress line per run
    assert (tmp_path / "cmp" / "compare.json").exists() and (
        tmp_path / "cmp" / ".hydra" / "config.yaml"
    ).exists()

    proc = cli(
        "parapolicy.scripts.profile",
        *common,
        "eval.progress=false",
        "eval.n_episodes=1",
        "sampler.num_inference_steps=5",
        "sampler.window=4",
        "control.mode=frozen",
        f"hydra.run.dir={tmp_path / 'prof'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "per step" in proc.stdout and (tmp_path / "prof" / "latency" / "summary.json").exists()


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["samplers.paraddpm.sampler.window=0"], "sampler.window must be in", 2),
        (["samplers.paraddpm.sampler.tol=0"], "sampler.tol must be > 0", 2),
        (["samplers.paraddpm.sampler.max_iters=0"], "sampler.max_iters must be >= 1", 2),
        (["control.n_action_steps=99"], "n_action_steps=99 must be <=", 2),
        (["samplers.sequential.sampler.num_inference_steps=1000"], "num_inference_steps=1000 must be <=", 2),
        (["policy_path=/nonexistent/ckpt"], "cannot load policy_path", 4),
    ],
)
def test_compare_cli_impossible_settings_fail_with_a_clear_message(checkpoint, tmp_path, args, message, code):
    """One line naming the problem, the documented exit code, no traceback."""
    base = [] if any(a.startswith("policy_path") for a in args) else [f"policy_path={checkpoint}"]
    proc = cli("parapolicy.scripts.compare", *base, *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == code, proc.stderr[-3000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_window_auto_is_resolved_before_the_rollouts(checkpoint, tmp_path, monkeypatch):
    """`window=auto` in compare and profile: measured on this device, recorded in the outputs."""
    monkeypatch.setenv("PARAPOLICY_CACHE_DIR", str(tmp_path / "cache"))
    auto = SamplerConfig(num_inference_steps=10, algorithm="picard", window="auto")
    cfg = small_compare(
        checkpoint,
        samplers={
            "sequential": SamplerEntry(SamplerConfig(num_inference_steps=10)),
            "paraddpm": SamplerEntry(auto),
        },
        modes=["frozen"],
        eval=EvalConfig(n_episodes=1, batch_size=1, max_steps=8, max_videos=0, progress=False),
        realtime_episodes=0,
        plots=False,
    )
    summary = run_compare(cfg, tmp_path / "compare")
    choice = summary["window_choice"]["paraddpm"]
    assert set(summary["window_choice"]) == {"paraddpm"} and isinstance(choice["window"], int)
    assert choice["window"] in choice["expected_ms"] or str(choice["window"]) in choice["expected_ms"]
    assert summary["runs"]["paraddpm"]["frozen"]["sampler"]["window"] == choice["window"]
    prof = ProfileConfig(
        policy_path=str(checkpoint),
        sampler=auto,
        eval=EvalConfig(n_episodes=1, batch_size=1, max_steps=8, max_videos=0, progress=False),
        plots=False,
    )
    result = run_profile(prof, tmp_path / "profile")
    assert result["window_choice"]["window"] == result["sampler"]["window"] == choice["window"]


def test_compare_sweeps_latency_models_and_stitching(checkpoint, tmp_path):
    cfg = small_compare(
        checkpoint,
        run=["paraddpm"],
        baseline="paraddpm",
        latency_sweep=["fixed:150", "fixed:350"],
        stitch_sweep=["drop", "inpaint"],
        eval=EvalConfig(n_episodes=2, batch_size=2, max_steps=24, max_videos=0, progress=False),
    )
    out = tmp_path / "sweep"
    summary = run_compare(cfg, out)
    rows = {r["mode"]: r for r in summary["table"]}
    labels = [f"realtime_sim@fixed:{ms}/{st}" for ms in (150, 350) for st in ("drop", "inpaint")]
    assert list(rows) == ["frozen", *labels]
    for ms in (150, 350):
        for st in ("drop", "inpaint"):
            r = rows[f"realtime_sim@fixed:{ms}/{st}"]
            assert r["delay_ms"] == ms and r["stitch"] == st and r["chunk_p50_ms"] == ms
            assert r["expected_delay_ticks"] == ms // 100 + (ms % 100 > 0)
            assert r["action_boundary_mean_change"] is not None and r["plans_per_episode"] > 1
    assert rows["frozen"]["delay_ms"] is None and rows["frozen"]["stitch"] is None
    chunks = out / "paraddpm" / "latency" / "chunks_realtime_sim_fixed-350_inpaint.csv"
    with chunks.open() as fh:
        table = list(csv.DictReader(fh))
    later = [r["inpainted_rows"] for r in table if r["chunk"] != "0"]  # first plans: the world waited
    assert set(later) == {"5"} and len(later) >= 2  # 4 committed ticks + the tick before
    assert (out / "plots" / "delay_sweep.png").read_bytes()[:4] == PNG
    text = format_table(summary["table"])
    assert "realtime_sim@fixed:350/inpaint" in text and "bnd/in" in text
    # each rule after the sweep's first is paired with the first, at the same latency model
    pairs = {p["label"]: p for p in summary["paired"]}
    assert list(pairs) == [f"realtime_sim@fixed:{ms}/inpaint" for ms in (150, 350)]
    for ms in (150, 350):
        p = pairs[f"realtime_sim@fixed:{ms}/inpaint"]
        assert (p["sampler"], p["against_sampler"]) == ("paraddpm", "paraddpm") and p["n_episodes"] == 2
        assert p["against_label"] == f"realtime_sim@fixed:{ms}/drop"
        inpaint, drop = (rows[f"realtime_sim@fixed:{ms}/{st}"]["mean_score"] for st in ("inpaint", "drop"))
        assert p["mean_score_diff"] == pytest.approx(inpaint - drop, abs=1e-12)
    report = format_report(summary, out)
    assert "paraddpm realtime_sim@fixed:350/inpaint - paraddpm realtime_sim@fixed:350/drop: " in report


def test_paired_difference_golden_values_and_refusals():
    """Episodes are matched by seed, whatever their order; the interval is the normal one on the
    per-episode differences (sample standard deviation)."""
    runs = [
        {"seed": 1, "max_reward": 1.0, "success": True},
        {"seed": 2, "max_reward": 0.5, "success": False},
        {"seed": 3, "max_reward": 0.8, "success": False},
    ]
    against = [
        {"seed": 2, "max_reward": 0.7, "success": False},
        {"seed": 3, "max_reward": 0.8, "success": True},
        {"seed": 1, "max_reward": 0.9, "success": False},
    ]
    pair = paired_difference(runs, against)  # differences +0.1, -0.2, 0.0
    assert pair["n_episodes"] == 3 and pair["mean_score_diff"] == pytest.approx(-0.1 / 3)
    half = 1.959964 * (0.07 / 3) ** 0.5 / 3**0.5  # sample variance of the differences: 0.07 / 3
    assert pair["mean_score_diff_ci95"] == pytest.approx([-0.1 / 3 - half, -0.1 / 3 + half])
    assert pair["successes_only_here"] == 1 and pair["successes_only_there"] == 1
    assert paired_difference(runs[:1], against[2:])["mean_score_diff_ci95"] is None  # one episode
    with pytest.raises(ValueError, match="same episode seeds"):
        paired_difference(runs, against[:2])
    with pytest.raises(ValueError, match="each seed once"):
        paired_difference([runs[0], runs[0], runs[1]], against)


def test_delay_sweep_plot_takes_an_all_success_cell(tmp_path):
    """A cell with every episode successful: its Wilson upper bound is exactly 100 %, and the plot
    (which once raised on an error bar of -1e-14 after the runs, losing compare.json) is written."""
    lo, hi = wilson_interval(50, 50)
    assert hi == 1.0 and wilson_interval(0, 50)[0] == 0.0
    assert lo == pytest.approx(0.92865, abs=1e-5)  # the compare records' 50/50 cell: [92.9, 100]
    rows = [
        {"sampler": "paraddpm", "mode": "frozen", "stitch": None, "delay_ms": None, "mean_score": 1.0,
         "pc_success": 100.0, "pc_success_ci95": [92.9, 100.0]},
        {"sampler": "paraddpm", "mode": "realtime_sim@fixed:350/drop", "stitch": "drop", "delay_ms": 350,
         "mean_score": 1.0, "pc_success": 100.0, "pc_success_ci95": [92.9, 99.99999999999999]},
        {"sampler": "paraddpm", "mode": "realtime_sim@fixed:150/drop", "stitch": "drop", "delay_ms": 150,
         "mean_score": 0.9, "pc_success": 80.0, "pc_success_ci95": [67.0, 89.0]},
    ]  # fmt: skip
    path = delay_sweep(rows, tmp_path / "sweep.png")
    assert path.read_bytes()[:4] == PNG


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"latency_sweep": ["fixed:x"]}, "control.latency_model must be"),
        ({"latency_sweep": ["fixed:1", "fixed:1"]}, "latency_sweep must not repeat"),
        ({"stitch_sweep": ["blend"]}, "stitch_sweep must be distinct values"),
        (
            {"modes": ["frozen", "wallclock"], "latency_sweep": ["fixed:150", "fixed:550"]},
            r"latency_sweep sweeps realtime_sim's latency: add realtime_sim to modes=\['frozen'",
        ),
        (
            {"modes": ["frozen"], "stitch_sweep": ["drop", "inpaint"]},
            r"stitch_sweep sweeps a time-aware mode's stitching: add realtime_sim or wallclock",
        ),
    ],
)
def test_compare_sweep_settings_fail_at_start(checkpoint, kwargs, message):
    with pytest.raises(ValueError, match=message):
        small_compare(checkpoint, **kwargs)


def test_the_not_below_check_forgives_float_rounding_only(checkpoint):
    cfg = small_compare(checkpoint, modes=["realtime_sim"])
    rows = [
        {"sampler": "sequential", "mode": "realtime_sim", "score_diff_vs_baseline": 0.0},
        {"sampler": "paraddpm", "mode": "realtime_sim", "score_diff_vs_baseline": -9.4e-7},
    ]
    assert _checks(cfg, rows)["realtime_sim_score_not_below_baseline"]["ok"]
    rows[1]["score_diff_vs_baseline"] = -2e-6
    assert not _checks(cfg, rows)["realtime_sim_score_not_below_baseline"]["ok"]


def test_the_profile_report_lines_are_golden():
    latency = {
        "mode": "realtime_sim", "hz": 10.0, "budget_ms": 100.0, "n_steps": 32, "warmup_steps_excluded": 2,
        "warmup": {"latency_ms": [120.0, 80.5]}, "p50_ms": 0.012, "p90_ms": 41.0, "p99_ms": 55.25,
        "max_ms": 60.0, "miss_rate": 0.03125,
        "chunk": {"p50_ms": 40.0, "p90_ms": 45.0, "p99_ms": 50.0, "max_ms": 52.0, "over_budget": 0, "n": 4},
        "action_sources": {"fresh": 4, "queued": 28},
        "sections": {
            "denoiser": {"total_ms": 150.4, "share": 0.75}, "env_step": {"total_ms": 50.0, "share": 0.25},
        },
    }  # fmt: skip
    aggregated = {"mean_score": 0.5, "pc_success": 50.0, "n_episodes": 2}
    lines = format_profile({"latency": latency, "aggregated": aggregated}).splitlines()
    assert lines[1] == "per step  p50 0.012  p90 41.000  p99 55.2  max 60.0 ms   miss rate 3.1%"
    assert lines[4] == "sections  denoiser 150 ms (75%)  env_step 50 ms (25%)"
    assert lines[-1] == "score 0.500, success 50% over 2 episodes"
