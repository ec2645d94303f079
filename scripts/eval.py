"""`parapolicy-eval`: closed-loop evaluation of a checkpoint on the reference PushT test seeds."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import hydra

from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.control.evaluation import EvalConfig
from parapolicy.policy.control.rollout import evaluate_policy
from parapolicy.policy.model.pretrained import load_policy
from parapolicy.policy.run_info import run_info
from parapolicy.policy.runtime.auto_window import resolve_sampler

from ._hydra import CONFIG_PATH, VERSION_BASE, register_schema, run_dir, to_dataclass


@dataclass
class EvalAppConfig:
    """`parapolicy-eval` settings."""

    policy_path: str = "assets/default_policy"
    """Checkpoint directory (config.json, model.safetensors, normalizer.safetensors)."""
    device: str = "cpu"
    """Torch device."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """Sampler used for evaluation (default: the reference's sequential DDPM-100)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Episodes, seeds, batching, videos."""


register_schema("eval_schema", EvalAppConfig)


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="eval")
def main(cfg) -> None:
    """Evaluate and write ``eval_info.json`` (+ videos) in the run folder."""
    app: EvalAppConfig = to_dataclass(cfg)
    out = run_dir()
    policy = load_policy(app.policy_path, device=app.device)
    sampler, auto_window = resolve_sampler(
        policy, app.sampler
    )  # window="auto": measured here, recorded below
    policy.set_sampler(sampler)
    result = evaluate_policy(policy, app.eval, video_dir=out / "videos" if app.eval.max_videos else None)
    result["run"] = {
        **run_info(app.device),
        "policy_path": app.policy_path,
        "sampler": dataclasses.asdict(sampler),
        "auto_window": auto_window,
        "eval": dataclasses.asdict(app.eval),
    }
    (out / "eval_info.json").write_text(json.dumps(result, indent=2))
    agg = result["aggregated"]
    lo, hi = agg["pc_success_ci95"]
    print(
        f"mean_score {agg['mean_score']:.3f} | success {agg['pc_success']:.1f}% (95% CI {lo:.1f}-{hi:.1f}) "
        f"over {agg['n_episodes']} episodes | {agg['eval_s']:.0f} s -> {out / 'eval_info.json'}"
    )


if __name__ == "__main__":
    main()
