"""Measure the multimodality of the expert from matched start states (no hydra).

For each of ``--starts`` reference start states, run the expert ``--strategies`` times with different
strategy seeds, label every episode with `parapolicy.envs.strategy.first_push` and report: success
rate (within ``--max-steps``), pooled label shares, and per start state how many distinct first-push
sides occur and the share of its most common side (1.0 = one strategy per start state, as the
deterministic planner has).

    python scripts/strategy_shares.py --starts 40 --strategies 5 --workers 2 --out shares.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time

from parapolicy.envs.expert import ExpertConfig, run_expert_episode
from parapolicy.envs.strategy import first_push, matched_start_summary


def _run(args: tuple[int, int, str, int]) -> dict:
    seed, strategy_seed, mode, max_steps = args
    rec = run_expert_episode(
        seed, ExpertConfig(mode=mode), max_steps, record_keys=("state",), strategy_seed=strategy_seed
    )
    push = first_push(rec.data["state"])
    return {
        "seed": seed,
        "strategy_seed": strategy_seed,
        "success": rec.success,
        "n_steps": rec.n_steps,
        "drawn_side": rec.side,
        "side": push.side,
        "part": push.part,
        "first_push_step": push.step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--starts", type=int, default=40, help="start states (reference seeds)")
    parser.add_argument("--start-seed", type=int, default=100000, help="first reference seed")
    parser.add_argument("--strategies", type=int, default=5, help="strategy seeds per start state")
    parser.add_argument("--mode", default="multimodal", help="expert mode (planner: the deterministic one)")
    parser.add_argument(
        "--max-steps", type=int, default=300, help="cut episodes here (the label needs only the first push)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="", help="write rows and summary to this JSON file")
    args = parser.parse_args()
    if args.starts < 1 or args.strategies < 1 or args.workers < 1:
        parser.error("--starts, --strategies and --workers must be >= 1")
    jobs = [
        (seed, k, args.mode, args.max_steps)
        for seed in range(args.start_seed, args.start_seed + args.starts)
        for k in range(args.strategies)
    ]
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(args.workers) as pool:
        rows = pool.map(_run, jobs, chunksize=1)
    summary = matched_start_summary(rows)
    summary["wall_time_s"] = time.perf_counter() - start
    summary["command"] = vars(args)
    print(json.dumps(summary, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"summary": summary, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
