"""Run each console entry point as a subprocess with a tiny budget (cleanrl-style smoke tests)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import console_script


def run(args: list[str], cwd) -> subprocess.CompletedProcess:
    exe = console_script(args[0])
    return subprocess.run([exe, *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=300, env=None)


def test_demo_writes_video_strip_and_summary(tmp_path):
    out = tmp_path / "run"
    proc = run(["parapolicy-demo", "max_steps=6", "video_size=64", f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "coverage" in proc.stdout
    summary = json.loads((out / "demo.json").read_text())
    assert summary["steps"] == 6
    assert (out / "demo.mp4").stat().st_size > 0 and (out / "demo_strip.png").stat().st_size > 0


def test_bench_env_prints_table_and_json(tmp_path):
    out = tmp_path / "run"
    proc = run(
        [
            "parapolicy-bench-env",
            "n_steps=20",
            "n_resets=5",
            "repeats=1",
            "vec_steps=5",
            "n_vec_envs=2",
            "vec_modes=[sync]",
            "obs_types=[state,pixels]",
            f"hydra.run.dir={out}",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "state" in proc.stdout and "vector sync x2" in proc.stdout
    result = json.loads((out / "bench_env.json").read_text())
    assert set(result["per_obs_type"]) == {"state", "pixels"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["parapolicy-demo", "sed=1"], "sed"),
        (["parapolicy-demo", "max_steps=many"], "max_steps"),
        (["parapolicy-demo", "max_steps=0"], "max_steps must be in"),
        (["parapolicy-bench-env", "repeats=0"], "repeats must be >= 1"),
    ],
)
def test_bad_overrides_fail_clearly(tmp_path, args, message):
    proc = run([*args, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout


def test_module_entry_points_are_importable():
    proc = subprocess.run(
        [sys.executable, "-c", "import parapolicy.scripts.demo, parapolicy.scripts.bench_env"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_bench_env_refuses_an_unknown_observation_type_before_timing():
    from parapolicy.envs.benchmark import EnvBenchConfig

    with pytest.raises(ValueError, match=r"obs_types must be names from .*got \['state', 'bogus'\]"):
        EnvBenchConfig(obs_types=("state", "bogus"))
