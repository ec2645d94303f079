"""The evaluation job (`parapolicy-eval`): the reference protocol on a checkpoint; no hydra.

`run_eval` loads the checkpoint with the chosen sampler, runs `control.rollout.evaluate_policy` (frozen
rollouts from the reference initial states of seeds ``eval.start_seed ..``) on the chosen task and
writes ``eval_info.json`` (+ videos) into the run folder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.control.evaluation import EvalConfig
from parapolicy.policy.control.rollout import evaluate_policy
from parapolicy.policy.control.tasks import check_task_name, task_for_policy
from parapolicy.policy.model.pretrained import load_policy
from parapolicy.policy.run_health import DEFAULT_MAX_REJECTED_SHARE
from parapolicy.policy.run_info import run_info
from parapolicy.policy.runtime.auto_window import resolve_sampler


@dataclass
class EvalJobConfig:
    """`parapolicy-eval` settings."""

    policy_path: str = "assets/default_policy"
    """Checkpoint directory (config.json, model.safetensors, normalizer.safetensors)."""
    device: str = "cpu"
    """Torch device."""
    task: str = "pusht"
    """Environment: ``pusht`` (PushT-v0 of this repository) or ``gym_pusht`` (HuggingFace's gym-pusht)."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """Sampler used for evaluation (default: the reference's sequential DDPM-100)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Episodes, seeds, batching, videos."""
    max_rejected_share: float = DEFAULT_MAX_REJECTED_SHARE
    """Exit non-zero (code 8, records still written) when the output guard rejects more plans than this."""

    def __post_init__(self) -> None:
        check_task_name(self.task)
        if not 0.0 <= self.max_rejected_share <= 1.0:
            raise ValueError(f"max_rejected_share must be in [0, 1], got {self.max_rejected_share}")


def run_eval(cfg: EvalJobConfig, out: Path) -> dict[str, Any]:
    """Evaluate and write ``eval_info.json`` (+ videos under ``videos/``) into ``out``; returns its body."""
    out = Path(out)
    policy = load_policy(cfg.policy_path, device=cfg.device)
    sampler, auto_window = resolve_sampler(policy, cfg.sampler)  # window="auto": measured here
    policy.set_sampler(sampler)
    video_dir = out / "videos" if cfg.eval.max_videos else None
    result = evaluate_policy(
        policy, cfg.eval, video_dir=video_dir, task=task_for_policy(cfg.task, policy.config)
    )
    result["run"] = {
        **run_info(cfg.device),
        "policy_path": cfg.policy_path,
        "sampler": dataclasses.asdict(sampler),
        "auto_window": auto_window,
        "eval": dataclasses.asdict(cfg.eval),
        "task": cfg.task,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_info.json").write_text(json.dumps(result, indent=2))
    return result


def format_eval(result: dict[str, Any]) -> str:
    """The one-line summary `parapolicy-eval` prints."""
    agg = result["aggregated"]
    lo, hi = agg["pc_success_ci95"]
    return (
        f"mean_score {agg['mean_score']:.3f} | success {agg['pc_success']:.1f}% (95% CI {lo:.1f}-{hi:.1f}) "
        f"over {agg['n_episodes']} episodes | {agg['eval_s']:.0f} s"
    )
