"""The one GPU call, proven on the CPU: scripts/gpu_bench.py --smoke and scripts/gpu_check.sh.

The lent GPU machine has torch, numpy, safetensors and pytest but none of our other dependencies, and
the package is not installed there. `gpu_check.sh`'s launcher is tested the same way: the interpreter
runs without site-packages processing (so the editable install is invisible) and the dependencies the
GPU machine lacks are shadowed by packages that refuse to import.
"""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
SCRIPT = REPO / "scripts" / "gpu_bench.py"
ABSENT_ON_GPU = ("zarr", "gymnasium", "gym_pusht", "hydra", "omegaconf", "pymunk", "shapely", "cv2", "av")
FAST = "environment,network,ddpm,few_step,cost,parity,auto_window,shipped"


def _numbers(obj: object):
    """Every float or int inside a JSON value (bools excluded)."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        yield obj


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu") / "gpu_bench.json"
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--device", "cpu", "--sections", FAST, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "summary:" in proc.stdout  # the closing table is printed
    return json.loads(out.read_text())


def test_smoke_writes_every_section_without_errors(smoke):
    assert set(smoke) >= {"profile", "settings", "network", "sections", "errors", "summary", "wall_s"}
    assert smoke["profile"] == "smoke" and smoke["errors"] == []
    assert set(smoke["sections"]) == set(FAST.split(","))
    assert all(s["status"] == "ok" for s in smoke["sections"].values()), smoke["sections"]
    assert all(math.isfinite(v) for v in _numbers(smoke))
    env = smoke["sections"]["environment"]["result"]
    assert env["torch"] and env["gpu"] is None and isinstance(env["tf32_cudnn_allowed"], bool)


def test_smoke_rows_cover_the_grid_with_small_parity(smoke):
    rows = smoke["sections"]["ddpm"]["result"]
    names = [r["name"] for r in rows]
    for variant in ("fp32 eager", "fp32 graph", "bf16 eager", "bf16 graph"):
        assert f"{variant} ddpm10 sequential" in names
        assert f"{variant} paraddpm w=4 tol=0.1" in names and f"{variant} paraddpm w=8 tol=0.1 warm" in names
        assert f"{variant} paraddpm parareal linear w=8 tol=0.1" in names
    graph = [r for r in rows if r["variant"] in ("fp32 graph", "bf16 graph")]
    assert graph and all(r["error"].startswith("skipped: CUDA graphs need") for r in graph)
    measured = [r for r in rows if "error" not in r]
    assert len(measured) == len(rows) - len(graph)
    for r in measured:
        ms = r["ms_per_chunk"]
        assert ms["n"] == 3 and 0 < ms["min"] <= ms["p10"] <= ms["median"] <= ms["p90"] <= ms["max"]
        assert r["converged"]
        if "iteration" not in r["variant"]:  # the network is timed apart only outside a fixed iteration
            assert 0.0 <= r["outside_network_pct"] <= 100.0
        # Picard stops at tol 0.1 (a fraction of each step's sigma), bf16 rounds: both stay small
        limit = 1e-6 if r["variant"] == "fp32 eager" and not r["parallel"] else 0.5
        assert r["max_abs_diff_to_fp32_sequential"] <= limit, r
    # the fixed-shape iteration (CUDA-graph code, eager on the CPU) takes sample_picard's iterations
    by_name = {r["name"]: r for r in measured}
    for precision in ("fp32", "bf16"):
        for sampler in ("paraddpm w=4 tol=0.1", "paraddpm w=8 tol=0.1 warm"):
            fixed, ref = (
                by_name[f"{precision} iteration-eager {sampler}"],
                by_name[f"{precision} eager {sampler}"],
            )
            assert fixed["captured"] is False and fixed["outside_network_pct"] is None
            assert fixed["iterations"] == ref["iterations"]
            # a conv network's rows vary in the last bits with the batch size (padded rows here)
            assert fixed["max_abs_diff_to_fp32_sequential"] == pytest.approx(
                ref["max_abs_diff_to_fp32_sequential"], abs=1e-4
            )
    seq = next(r for r in measured if r["name"] == "fp32 eager ddpm10 sequential")
    assert seq["iterations"] == seq["model_calls"] == 10  # K calls of one row
    few = {r["name"] for r in smoke["sections"]["few_step"]["result"] if "error" not in r}
    assert {"fp32 eager dpmsolver++-5 sequential", "fp32 eager paraddim-16 w=16 tol=0.1"} <= few


def test_smoke_network_parity_auto_window_and_cost(smoke):
    net = smoke["sections"]["network"]["result"]["vs_strict_fp32_eager"]
    assert net["fp32 eager"]["max_abs_diff"] == 0.0 and 0 < net["bf16 eager"]["rel_l2"] < 0.1
    parity = smoke["sections"]["parity"]["result"]["fp32 eager"]
    assert parity["ok"] and parity["max_abs_diff"] <= 1e-4
    auto = smoke["sections"]["auto_window"]["result"]["eager"]
    assert auto["chosen"] == auto["report"]["chosen"] and auto["chosen"] >= 1
    cost = smoke["sections"]["cost"]["result"]["fp32 eager"]
    assert set(cost) == {"1", "2", "4"} and all(c["median"] > 0 for c in cost.values())
    shipped = smoke["sections"]["shipped"]["result"]
    assert shipped["unet"]["down_dims"] == [64, 128, 256]
    names = [r["name"] for r in shipped["rows"] if "error" not in r]
    assert names == [
        "shipped fp32 eager ddpm10 sequential",
        "shipped fp32 eager paraddpm w=4 tol=0.1",
        "shipped fp32 eager paraddpm parareal linear w=4 tol=0.1",
        "shipped fp32 eager paraddpm w=8 tol=0.1",
        "shipped fp32 eager paraddpm parareal linear w=8 tol=0.1",
        "shipped fp32 iteration-eager paraddpm w=4 tol=0.1",
        "shipped fp32 iteration-eager paraddpm w=8 tol=0.1",
    ]
    linear = [r for r in shipped["rows"] if r.get("coarse") == "linear" and "error" not in r]
    assert len(linear) == 2 and all(r["update"] == "parareal" and r["converged"] for r in linear)


def test_unknown_section_is_refused():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--sections", "ddpm,warp"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "unknown sections ['warp']" in proc.stderr


def _gpu_like_python(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """An interpreter that sees torch and numpy but neither the installed package nor the absent deps."""
    blocked = tmp_path / "absent"
    for name in ABSENT_ON_GPU:
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(
            f"raise ImportError('{name} is absent on the GPU machine')\n"
        )
    wrapper = tmp_path / "python3"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    site = [p for p in sys.path if "site-packages" in p]
    env = {**os.environ, "PYTHON": str(wrapper), "PYTHONPATH": os.pathsep.join([str(blocked), *site])}
    return wrapper, env


def test_gpu_check_runs_from_the_checkout_without_install(tmp_path):
    _, env = _gpu_like_python(tmp_path)
    out = tmp_path / "out"
    env.update(OUT=str(out), SMOKE="1", SECTIONS="environment,network,parity,pytest")
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (out / "gpu_check.log").read_text()
    assert "imported from the checkout" in log and "gpu_check: exit status 0" in log
    result = json.loads((out / "gpu_bench.json").read_text())
    assert result["errors"] == [] and set(result["sections"]) == {
        "environment",
        "network",
        "parity",
        "pytest",
    }
    tests = result["sections"]["pytest"]["result"]
    assert tests["returncode"] == 0 and "passed" in tests["summary"][0]  # conftest needs no zarr


@pytest.mark.slow
def test_gpu_check_whole_smoke_run_including_distributed(tmp_path):
    """The whole command as the GPU machine runs it, every section (about a minute on a busy CPU)."""
    _, env = _gpu_like_python(tmp_path)
    env.update(OUT=str(tmp_path), SMOKE="1")
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    result = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert result["errors"] == []
    gloo = result["sections"]["distributed"]["result"]["gloo"]
    assert (
        gloo["ok"]
        and gloo["returncode"] == 0
        and set(gloo["distributed_ms_per_call"]) == {"1", "8", "16", "32"}
    )
