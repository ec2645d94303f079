"""Does a sampler keep a policy's strategies? First-push sides of policy rollouts from matched starts.

For each sampler, run the policy frozen (the evaluation protocol) from ``--starts`` reference start
states, once per noise seed ``0 .. --noise-seeds - 1``, for at most ``--max-steps`` steps (the label
needs only the first push), and summarise the first-push sides with
`parapolicy.envs.strategy.matched_start_summary`: a sampler that collapses the policy's modes shows one
side per start state (mean majority share near 1.0).

    python scripts/policy_strategy_shares.py --policy assets/multimodal_policy \\
        --samplers ddpm:100 dpmsolver++:5 --starts 30 --noise-seeds 4 --out shares.json
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from parapolicy.envs.initial_states import reference_initial_state
from parapolicy.envs.pusht import PushTEnv
from parapolicy.envs.strategy import first_push, matched_start_summary
from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.control.evaluation import EvalConfig
from parapolicy.policy.control.rollout import ControlConfig, run_rollouts
from parapolicy.policy.model.pretrained import load_policy


class _RecordingEnv(PushTEnv):
    """A keypoints PushT env that keeps its reset state and the (agent, block pose) state of each step."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        obs, info = super().reset(seed=seed, options=options)
        self.reset_state = None if options is None else np.asarray(options.get("reset_to_state"))
        self.states = [np.concatenate([info["pos_agent"], info["block_pose"]])]
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        out = super().step(action)
        self.states.append(np.concatenate([out[4]["pos_agent"], out[4]["block_pose"]]))
        self.success = bool(out[4]["is_success"]) or getattr(self, "success", False)
        return out


def _sampler(spec: str) -> SamplerConfig:
    kind, _, steps = spec.partition(":")
    if not steps.isdigit():
        raise ValueError(f"sampler spec must be KIND:STEPS (e.g. ddpm:100), got {spec!r}")
    return SamplerConfig(kind=kind, num_inference_steps=int(steps))


def run(policy_path: str, spec: str, starts: int, start_seed: int, noise_seeds: int, max_steps: int) -> dict:
    """Rows (one per episode) and summary for one sampler."""
    policy = load_policy(policy_path, sampler=_sampler(spec))
    seeds = {tuple(reference_initial_state(s)): s for s in range(start_seed, start_seed + starts)}
    rows = []
    for k in range(noise_seeds):
        envs: list[_RecordingEnv] = []

        def factory(envs: list[_RecordingEnv] = envs) -> _RecordingEnv:
            envs.append(_RecordingEnv(obs_type="keypoints"))
            return envs[-1]

        cfg = EvalConfig(
            n_episodes=starts,
            batch_size=starts,
            start_seed=start_seed,
            noise_seed=k,
            max_steps=max_steps,
            max_videos=0,
            progress=False,
        )
        run_rollouts(policy, cfg, ControlConfig(mode="frozen", warmup_plans=0), env_factory=factory)
        for env in envs:
            push = first_push(np.asarray(env.states))
            seed = seeds[tuple(env.reset_state)]
            success = getattr(env, "success", False)
            rows.append(
                {"seed": seed, "noise_seed": k, "side": push.side, "part": push.part, "success": success}
                | {"n_steps": len(env.states) - 1, "first_push_step": push.step}
            )
    return {"summary": matched_start_summary(rows), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policy", default="assets/multimodal_policy")
    parser.add_argument("--samplers", nargs="+", default=["ddpm:100", "dpmsolver++:5"], help="KIND:STEPS")
    parser.add_argument("--starts", type=int, default=30)
    parser.add_argument("--start-seed", type=int, default=100000)
    parser.add_argument("--noise-seeds", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if min(args.starts, args.noise_seeds, args.max_steps) < 1:
        parser.error("--starts, --noise-seeds and --max-steps must be >= 1")
    results = {}
    for spec in args.samplers:
        start = time.perf_counter()
        results[spec] = run(args.policy, spec, args.starts, args.start_seed, args.noise_seeds, args.max_steps)
        results[spec]["summary"]["wall_time_s"] = time.perf_counter() - start
        print(spec, json.dumps(results[spec]["summary"], indent=2), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
