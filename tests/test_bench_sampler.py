"""parapolicy-bench on a tiny checkpoint: table rows, exactness column, JSON output."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import console_script

from parapolicy.policy.bench import (
    SamplerBenchConfig,
    format_inpaint_overhead,
    run_inpaint_overhead,
    run_sampler_benchmark,
)

GOLDEN = Path(__file__).parent / "artifacts" / "golden_tiny"


def test_benchmark_rows(tiny_policy):
    cfg = SamplerBenchConfig(
        num_inference_steps=20, windows=(4,), tols=(0.1, 1e-6), n_chunks=2, repeats=1, batch_sizes=(1, 4)
    )
    result = run_sampler_benchmark(tiny_policy, cfg)
    names = [r["name"] for r in result["rows"]]
    assert names[0] == "sequential" and len(names) == 1 + 2 * 2
    rows = {r["name"]: r for r in result["rows"]}
    # sequential K=20 on one sample: 20 iterations, 20 network calls of one row each
    assert rows["sequential"]["iterations"] == 20 and rows["sequential"]["model_calls"] == 20
    assert rows["sequential"]["model_rows"] == 20
    assert rows["picard w=4 tol=1e-06"]["max_abs_diff_px"] < 1e-2  # px, near-exact at a tiny tolerance
    assert set(result["denoiser_ms_per_call"]) == {"1", "4"}


def test_inpaint_overhead_rows(tiny_policy):
    cfg = SamplerBenchConfig(
        num_inference_steps=10, windows=(4,), tols=(0.1,), n_chunks=3, repeats=2, inpaint_delay=4
    )
    result = run_inpaint_overhead(tiny_policy, cfg)
    assert [r["name"] for r in result["inpaint_rows"]] == ["sequential", "picard w=4 tol=0.1"]
    assert result["n_chunks"] == 2 and result["delay"] == 4
    seq = result["inpaint_rows"][0]
    assert seq["iterations_plain"] == seq["iterations_inpaint"] == 10
    assert all(r["ms_plain"]["median"] > 0 and r["ms_inpaint"]["median"] > 0 for r in result["inpaint_rows"])
    assert "overhead %" in format_inpaint_overhead(result)
    with pytest.raises(ValueError, match="n_chunks >= 2"):
        run_inpaint_overhead(tiny_policy, SamplerBenchConfig(n_chunks=1, inpaint_delay=4))


def test_bad_bench_settings():
    with pytest.raises(ValueError, match="windows"):
        SamplerBenchConfig(windows=(0,))
    with pytest.raises(ValueError, match="tols"):
        SamplerBenchConfig(tols=(0.0,))


def test_bench_command(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            console_script("parapolicy-bench"),
            f"policy_path={GOLDEN}",
            "bench.num_inference_steps=10",
            "bench.windows=[4]",
            "bench.tols=[0.1]",
            "bench.warm_starts=[true]",
            "bench.n_chunks=2",
            "bench.repeats=1",
            "bench.batch_sizes=[1,2]",
            "bench.compile=trace",
            f"hydra.run.dir={out}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "picard w=4 tol=0.1 warm" in proc.stdout
    assert len(json.loads((out / "bench.json").read_text())["rows"]) == 2
