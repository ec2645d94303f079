"""One-call GPU check: sequential DDPM-100 vs ParaDDPM for the reference-size network.

Meant for the lent GPU machine, which has torch but none of our other dependencies and no package
index: it imports only torch, numpy and the self-contained sampling modules of `policy/`, straight
from this checkout (no install needed)::

    python scripts/gpu_bench.py --device cuda --out gpu_bench.json

It measures, CUDA-synchronised, with medians over repeats: the denoiser's cost against batch rows,
sequential DDPM-100 per chunk (batch 1), and ParaDDPM per chunk over windows and tolerances, cold and
warm-started from the previous chunk's sample, with the max |difference| to the sequential sample
of the same noise; on CUDA all of it twice, eager and with the denoiser replayed as CUDA graphs
(`policy/runtime/cuda_graphs.py`; ``--no-graphs`` skips that), with speedups against the same variant's
sequential sampler and against the fastest sequential run of either, and each variant's max
|difference| to the eager network on the cost-curve inputs (the CUDA-graph parity check). Weights
are random unless ``--weights`` names a `model.safetensors` of the same size: iteration counts of
random weights do not represent a trained policy, per-call costs do.
Record the printed table in docs/benchmarks.md with the card's name.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
import types
from pathlib import Path


def _import_policy_package() -> None:
    """Make `parapolicy.policy` importable from this checkout without installing it."""
    try:
        import parapolicy.policy  # noqa: F401  (installed: nothing to do)

        return
    except ImportError:
        pass
    root = Path(__file__).resolve().parents[1]
    pkg = types.ModuleType("parapolicy")
    pkg.__path__ = []  # a namespace for the mapped subpackage
    sys.modules["parapolicy"] = pkg
    spec = importlib.util.spec_from_file_location(
        "parapolicy.policy",
        root / "policy" / "__init__.py",
        submodule_search_locations=[str(root / "policy")],
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["parapolicy.policy"] = module
    spec.loader.exec_module(module)


_import_policy_package()

import torch  # noqa: E402

from parapolicy.policy.diffusion.picard import sample_picard  # noqa: E402
from parapolicy.policy.diffusion.schedules import make_alphas_cumprod, make_step_table, make_timesteps  # noqa: E402
from parapolicy.policy.diffusion.sequential import draw_noise, sample_sequential, sync_device  # noqa: E402
from parapolicy.policy.diffusion.warm_start import warm_start_guess  # noqa: E402
from parapolicy.policy.model.networks import ConditionalUnet1d  # noqa: E402
from parapolicy.policy.runtime.cuda_graphs import GraphedDenoiser  # noqa: E402


def _time(fn, device: torch.device, repeats: int) -> tuple[float, object, float, float]:
    times, out = [], None
    for _ in range(repeats):
        sync_device(device)
        start = time.perf_counter()
        out = fn()
        sync_device(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), out, min(times), max(times)


def _bench_variant(name, denoise, net_eager, args, device, table, noises, conds, result) -> None:
    """Cost curve, sequential and the Picard grid for one denoiser variant (eager or CUDA graphs)."""
    result["cost_ms"][name] = {}
    parity = 0.0  # max |this variant - the eager network| over the cost-curve inputs
    for rows in (1, 2, 4, 8, 16, 32, 64, 100):
        x = torch.randn(rows, 16, 2, device=device)
        t = torch.randint(0, 100, (rows,), device=device)
        c = torch.randn(rows, 40, device=device)
        _time(lambda x=x, t=t, c=c: denoise(x, t, c), device, 3)  # warm-up (and graph capture)
        result["cost_ms"][name][rows] = _time(lambda x=x, t=t, c=c: denoise(x, t, c), device, args.repeats)[0]
        parity = max(parity, float((denoise(x, t, c) - net_eager(x, t, c)).abs().max()))
    result["max_abs_diff_to_eager"][name] = parity

    def run_seq():
        return [
            sample_sequential(denoise, x_T, table, n, c) for (x_T, n), c in zip(noises, conds, strict=True)
        ]

    run_seq()
    seq_ms, seq_out, _, _ = _time(run_seq, device, args.repeats)
    result["rows"].append(
        {
            "name": f"{name} sequential",
            "ms_per_chunk": seq_ms / args.chunks,
            "iterations": args.steps,
            "speedup": 1.0,
            "max_abs_diff": 0.0,
        }
    )
    for w in (int(v) for v in args.windows.split(",")):
        for tol in (float(v) for v in args.tols.split(",")):
            for warm in (False, True):

                def run_par(w=w, tol=tol, warm=warm):
                    outs, prev = [], None
                    for (x_T, n), c in zip(noises, conds, strict=True):
                        guess = warm_start_guess(prev, 8) if warm and prev is not None else None
                        r = sample_picard(
                            denoise,
                            x_T,
                            table,
                            n,
                            c,
                            window=min(w, args.steps),
                            tol=tol,
                            x0_guess=guess,
                            refill="x0_rollout",
                        )
                        outs.append(r)
                        prev = r.sample
                    return outs

                run_par()
                ms, outs, _, _ = _time(run_par, device, args.repeats)
                diff = max(
                    float((a.sample - b.sample).abs().max()) for a, b in zip(outs, seq_out, strict=True)
                )
                result["rows"].append(
                    {
                        "name": f"{name} picard w={w} tol={tol:g}{' warm' if warm else ''}",
                        "ms_per_chunk": ms / args.chunks,
                        "iterations": statistics.mean(r.iterations for r in outs),
                        "speedup": seq_ms / ms,
                        "max_abs_diff": diff,
                    }
                )


def main(argv: list[str] | None = None) -> dict:
    """Run the check and print the table; returns the result dict."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--down-dims", default="256,512,1024")
    ap.add_argument("--embed", type=int, default=256)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--windows", default="8,16,32,64,100")
    ap.add_argument("--tols", default="0.1,0.01")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--weights", default=None, help="optional model.safetensors (ema.* keys) of this size")
    ap.add_argument("--no-graphs", action="store_true", help="skip the CUDA-graph variant on CUDA")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = (
        ConditionalUnet1d(2, 40, args.embed, tuple(int(d) for d in args.down_dims.split(",")))
        .to(device)
        .eval()
    )
    if args.weights:
        from safetensors.torch import load_file

        state = {k[4:]: v for k, v in load_file(args.weights).items() if k.startswith("ema.")}
        net.load_state_dict(state, strict=True)
    table = make_step_table(
        make_alphas_cumprod("squaredcos_cap_v2", 100), make_timesteps(100, args.steps), device=device
    )
    gen = torch.Generator().manual_seed(0)
    conds = [torch.randn(1, 40, generator=gen).to(device) for _ in range(args.chunks)]
    noises = [draw_noise(table, (1, 16, 2), gen, device=device) for _ in range(args.chunks)]

    variants = {"eager": net}
    if device.type == "cuda" and not args.no_graphs:
        variants["cuda_graph"] = GraphedDenoiser(net, device, (16, 2), 40)
    result: dict = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "params": sum(p.numel() for p in net.parameters()),
        "cost_ms": {},
        "max_abs_diff_to_eager": {},
        "rows": [],
    }
    with torch.inference_mode():
        for name, denoise in variants.items():
            _bench_variant(name, denoise, net, args, device, table, noises, conds, result)
    best_seq = min(r["ms_per_chunk"] for r in result["rows"] if r["name"].endswith("sequential"))
    for r in result["rows"]:
        r["speedup_vs_best_sequential"] = best_seq / r["ms_per_chunk"]
    print(f"{result['device_name']} | torch {result['torch']} | {result['params']:,} params")
    for name, curve in result["cost_ms"].items():
        print(f"{name} denoiser ms by rows: " + ", ".join(f"{k}: {v:.2f}" for k, v in curve.items()))
    print("max |output - eager network| per variant: " + str(result["max_abs_diff_to_eager"]))
    print("speedup: against the same variant's sequential; best: against the fastest sequential run")
    for r in result["rows"]:
        print(
            f"{r['name']:<38} {r['ms_per_chunk']:9.2f} ms/chunk  x{r['speedup']:5.2f}  "
            f"best x{r['speedup_vs_best_sequential']:5.2f}  iters {r['iterations']:6.1f}  "
            f"max|diff| {r['max_abs_diff']:.2e}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
