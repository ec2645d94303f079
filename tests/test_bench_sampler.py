"""parapolicy-bench on a tiny checkpoint: table rows, exactness column, JSON output."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import console_script, image_config

import parapolicy.policy.bench as bench_module
from parapolicy.policy.bench import (
    BenchJobConfig,
    SamplerBenchConfig,
    format_inpaint_overhead,
    format_sampler_benchmark,
    interleaved_ms_per_chunk,
    record_chunks,
    run_inpaint_overhead,
    run_sampler_benchmark,
)
from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.model.policy import DiffusionPolicy
from parapolicy.policy.runtime.load_probe import LoadProbe, machine_info

GOLDEN = Path(__file__).parent / "artifacts" / "golden_tiny"


def test_benchmark_rows(tiny_policy):
    cfg = SamplerBenchConfig(
        num_inference_steps=20,
        windows=(4,),
        tols=(0.1, 1e-6),
        updates=("picard", "parareal"),
        few_step=("ddim:5",),
        n_chunks=2,
        repeats=2,
        batch_sizes=(1, 4),
    )
    result = run_sampler_benchmark(tiny_policy, cfg)
    names = [r["name"] for r in result["rows"]]
    assert names == [
        "ddpm-20",
        "ddpm-20 picard w=4 tol=0.1",
        "ddpm-20 picard w=4 tol=1e-06",
        "ddpm-20 parareal w=4 tol=0.1",
        "ddpm-20 parareal w=4 tol=1e-06",
        "ddpm-20 parareal w=4 tol=0.1 linear",
        "ddpm-20 parareal w=4 tol=1e-06 linear",
        "ddim-5",
        "ddim-5 picard w=5 tol=0.1",
        "ddim-5 parareal w=5 tol=0.1",
    ]
    assert result["baseline"] == "ddpm-20"
    rows = {r["name"]: r for r in result["rows"]}
    # sequential K=20 on one sample: 20 iterations, 20 network calls of one row each
    assert rows["ddpm-20"]["iterations"] == 20 and rows["ddpm-20"]["model_calls"] == 20
    assert rows["ddpm-20"]["model_rows"] == 20 and rows["ddim-5"]["model_calls"] == 5
    assert rows["ddpm-20"]["max_abs_diff_to_baseline_px"] == 0.0  # reproduces the recorded plans
    assert rows["ddim-5"]["max_abs_diff_to_baseline_px"] > 0  # another rule, another sample
    for name in ("picard w=4 tol=1e-06", "parareal w=4 tol=1e-06", "parareal w=4 tol=1e-06 linear"):
        assert rows[f"ddpm-20 {name}"]["max_abs_diff_px"] < 1e-2  # near-exact at a tiny tolerance
    assert rows["ddpm-20 parareal w=4 tol=0.1 linear"]["coarse"] == "linear"
    assert rows["ddpm-20 parareal w=4 tol=0.1"]["coarse"] == "held_x0" and rows["ddpm-20"]["coarse"] is None
    assert result["coarse_calibration_s"] > 0
    assert rows["ddim-5 picard w=5 tol=0.1"]["window"] == 5
    assert rows["ddim-5 parareal w=5 tol=0.1"]["converged"]
    seq_ms = {n: rows[n]["ms_per_chunk"]["median"] for n in ("ddpm-20", "ddim-5")}
    assert result["fastest_sequential"] == min(seq_ms, key=seq_ms.get)
    for r in result["rows"]:  # speedups recomputed from the rows' medians
        ms = r["ms_per_chunk"]["median"]
        assert r["speedup"] == pytest.approx(seq_ms["ddpm-20"] / ms)
        assert r["speedup_vs_fastest_sequential"] == pytest.approx(min(seq_ms.values()) / ms)
        first, second = r["ms_per_chunk_rounds"]  # one figure per round; the median of two is their mean
        assert ms == pytest.approx((first + second) / 2) and r["ms_per_chunk"]["min"] == min(first, second)
        base_rounds = rows["ddpm-20"]["ms_per_chunk_rounds"]
        assert r["speedup_per_round"] == pytest.approx([base_rounds[0] / first, base_rounds[1] / second])
    assert set(result["denoiser_ms_per_call"]) == {"1", "4"}
    assert result["machine"]["torch_threads"] >= 1 and result["machine"]["cpu_model"]
    assert len(result["load"]["rounds"]) == 2
    assert all(p["process_cpu_s"] > 0 and p["wall_s"] > 0 for p in result["load"]["rounds"])
    text = format_sampler_benchmark(result)
    assert "ddim-5 parareal w=5 tol=0.1" in text and "machine:" in text and "load:" in text
    assert "linear: Parareal's linear coarse model, measured once before the rounds" in text
    grid = [r for r in result["rows"][1:] if r["name"].startswith("ddpm-20 ")]
    best = min(grid, key=lambda r: r["ms_per_chunk"]["median"])
    lo, hi = min(best["speedup_per_round"]), max(best["speedup_per_round"])
    assert f"paired per round: {best['name']} over ddpm-20 in each of the 2 rounds: median " in text
    assert f"[{lo:.2f}, {hi:.2f}]" in text


def test_interleaved_rounds_run_every_sampler_in_turn(tiny_policy, monkeypatch):
    """What compare's frontier latencies rest on: one warm-up chunk each, then rounds in which every
    sampler samples every recorded chunk in turn (A A B B, A A B B, ...), never one sampler's rounds
    in a row; the chunks come from the sampler with the most steps, whose noise the other one shares."""
    order = []
    real = bench_module.run_sampler

    def recording(sampler, *args, **kwargs):
        order.append(sampler.kind)
        return real(sampler, *args, **kwargs)

    monkeypatch.setattr(bench_module, "run_sampler", recording)
    samplers = [SamplerConfig(kind="ddim", num_inference_steps=4), SamplerConfig(num_inference_steps=10)]
    cfg = SamplerBenchConfig(n_chunks=2, repeats=3, few_step=(), progress=False)
    times = interleaved_ms_per_chunk(tiny_policy, samplers, cfg)
    assert order == ["ddim", "ddpm"] + ["ddim", "ddim", "ddpm", "ddpm"] * 3
    assert [len(t) for t in times] == [3, 3] and min(min(t) for t in times) > 0
    assert tiny_policy.sampler.num_inference_steps == 10  # recorded with the longest chain's noise


def test_inpaint_overhead_rows(tiny_policy):
    cfg = SamplerBenchConfig(
        num_inference_steps=10, windows=(4,), tols=(0.1,), n_chunks=3, repeats=2, inpaint_delay=4, few_step=()
    )
    result = run_inpaint_overhead(tiny_policy, cfg)
    names = ["sequential", "picard w=4 tol=0.1", "parareal w=4 tol=0.1"]  # every update of the grid
    assert [r["name"] for r in result["inpaint_rows"]] == names
    assert result["n_chunks"] == 2 and result["delay"] == 4
    seq = result["inpaint_rows"][0]
    assert seq["iterations_plain"] == seq["iterations_inpaint"] == 10
    assert all(r["ms_plain"]["median"] > 0 and r["ms_inpaint"]["median"] > 0 for r in result["inpaint_rows"])
    assert "overhead %" in format_inpaint_overhead(result) and "per row %" in format_inpaint_overhead(result)
    with pytest.raises(ValueError, match="n_chunks >= 2"):
        run_inpaint_overhead(tiny_policy, SamplerBenchConfig(n_chunks=1, inpaint_delay=4))


def test_bad_bench_settings():
    with pytest.raises(ValueError, match="windows"):
        SamplerBenchConfig(windows=(0,))
    with pytest.raises(ValueError, match="tols"):
        SamplerBenchConfig(tols=(0.0,))
    with pytest.raises(ValueError, match="sampler.update"):
        SamplerBenchConfig(updates=("anderson",))
    with pytest.raises(ValueError, match="updates"):
        SamplerBenchConfig(updates=())
    with pytest.raises(ValueError, match="coarses"):
        SamplerBenchConfig(coarses=())
    with pytest.raises(ValueError, match="sampler.coarse"):
        SamplerBenchConfig(coarses=("cubic",))
    with pytest.raises(ValueError, match="'kind:K'"):
        SamplerBenchConfig(few_step=("ddim",))
    with pytest.raises(ValueError, match="sampler.kind"):
        SamplerBenchConfig(few_step=("euler:5",))
    with pytest.raises(ValueError, match="K must be <= num_inference_steps=10"):
        SamplerBenchConfig(num_inference_steps=10, windows=(4,), few_step=("ddim:16",))
    with pytest.raises(ValueError, match=r"tols must be finite and > 0, got \(inf,\)"):
        SamplerBenchConfig(tols=(float("inf"),))
    with pytest.raises(ValueError, match="sampler.kind"):
        SamplerBenchConfig(kind="bogus")
    with pytest.raises(ValueError, match="compile mode must be one of"):
        SamplerBenchConfig(compile="bogus")
    with pytest.raises(ValueError, match=r"batch_sizes must be rows >= 1, got \(0,\)"):
        SamplerBenchConfig(batch_sizes=(0,))
    with pytest.raises(ValueError, match="inpaint_delay needs a delay >= 0 and n_chunks >= 2"):
        SamplerBenchConfig(inpaint_delay=-3)
    with pytest.raises(ValueError, match="compile=cuda_graph needs a CUDA device, got device='cpu'"):
        BenchJobConfig(bench=SamplerBenchConfig(compile="cuda_graph"))


def test_load_probe_counts_own_cpu():
    with LoadProbe() as probe:
        total = sum(i * i for i in range(200_000))  # busy the CPU for a few ms
    assert total > 0
    r = probe.result
    assert r["wall_s"] > 0 and r["process_cpu_s"] > 0 and r["loadavg_before"] >= 0
    assert r["foreign_busy_cpus"] is None or r["foreign_busy_cpus"] >= 0
    assert machine_info(3)["torch_threads"] == 3


def test_bench_command(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            console_script("parapolicy-bench"),
            f"policy_path={GOLDEN}",
            "bench.num_inference_steps=10",
            "bench.windows=[4]",
            "bench.tols=[0.1]",
            "bench.updates=[parareal]",
            "bench.few_step=[dpmsolver++:5]",
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
    assert "ddpm-10 parareal w=4 tol=0.1 warm" in proc.stdout and "dpmsolver++-5 parareal w=5" in proc.stdout
    data = json.loads((out / "bench.json").read_text())
    assert [r["name"] for r in data["rows"]] == [
        "ddpm-10",
        "ddpm-10 parareal w=4 tol=0.1 warm",
        "ddpm-10 parareal w=4 tol=0.1 linear warm",
        "dpmsolver++-5",
        "dpmsolver++-5 parareal w=5 tol=0.1",
    ]
    assert data["machine"]["cpu_model"] and data["load"]["rounds"]


def test_an_image_policy_is_benchmarked_on_its_own_observations():
    torch.manual_seed(0)
    policy = DiffusionPolicy(image_config(num_inference_steps=8, num_keypoints=8)).eval()
    policy.normalizer.fit({"obs": torch.rand(50, 2) * 512, "action": torch.rand(50, 2) * 512})
    chunks = record_chunks(policy, SamplerBenchConfig(n_chunks=2))
    assert [tuple(c["cond"].shape) for c in chunks] == [(1, policy.config.global_cond_dim)] * 2
    cfg = SamplerBenchConfig(
        num_inference_steps=8, windows=(4,), tols=(1e-6,), updates=("parareal",), few_step=(),
        n_chunks=2, repeats=1, batch_sizes=(1,),
    )  # fmt: skip
    rows = {r["name"]: r for r in run_sampler_benchmark(policy, cfg)["rows"]}
    assert rows["ddpm-8"]["max_abs_diff_to_baseline_px"] == 0.0  # reproduces the recorded plans
    assert rows["ddpm-8 parareal w=4 tol=1e-06"]["max_abs_diff_px"] < 1e-2
