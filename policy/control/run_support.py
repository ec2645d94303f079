"""Helpers the rollout jobs share (`compare.py`, `profile.py`, `eval.py`): their common settings
(`PolicyRunConfig`), opening the checkpoint with a message that says what to do, the progress bar, the
per-mode output block and number formatting for the printed tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from parapolicy.policy.config import shipped_path
from parapolicy.policy.control.records import RolloutResult
from parapolicy.policy.control.tasks import check_task_name
from parapolicy.policy.model.checkpoint import CheckpointError
from parapolicy.policy.model.policy import DiffusionPolicy, check_compile_mode
from parapolicy.policy.model.pretrained import load_policy


@dataclass
class PolicyRunConfig:
    """What every rollout job opens and where it runs it: the settings `parapolicy-compare`,
    `parapolicy-eval` and `parapolicy-profile` share (their configs extend this one)."""

    policy_path: str = "assets/default_policy"
    """Checkpoint: a parapolicy directory (config.json, model.safetensors, normalizer.safetensors), a
    LeRobot diffusion directory or a Diffusion Policy ``.ckpt`` file (``assets/...``: the shipped ones,
    from any working directory; `config.shipped_path`)."""
    device: str = "cpu"
    """Torch device."""
    compile: str = "trace"
    """How the denoiser runs (`DiffusionPolicy.set_compile`): ``trace`` (traced graphs, on the CPU with
    oneDNN-prepacked convolutions: less time per call than eager, the same outputs within float32
    rounding), ``none`` (eager) or ``cuda_graph`` (CUDA devices)."""
    task: str = "pusht"
    """Environment: ``pusht`` (PushT-v0 of this repository) or ``gym_pusht`` (HuggingFace's gym-pusht,
    same reference starts; `control.tasks.gym_pusht`)."""

    def __post_init__(self) -> None:
        self.policy_path = shipped_path(self.policy_path)
        check_compile_mode(self.compile, self.device)
        check_task_name(self.task)


def open_policy(path: str, device: str, compile: str = "none") -> DiffusionPolicy:
    """Load the checkpoint, turning a missing or broken one into a message that says what to do, and run
    its denoiser as ``compile`` says (`DiffusionPolicy.set_compile`)."""
    try:
        policy = load_policy(path, device=device)
    except CheckpointError as exc:
        raise CheckpointError(
            f"cannot load policy_path={path!r}: {str(exc).rstrip('.')}. Point policy_path at a checkpoint "
            "directory (config.json, model.safetensors, normalizer.safetensors), e.g. a parapolicy-train "
            "run's checkpoints/last/pretrained_model, a LeRobot diffusion directory or a Diffusion Policy "
            ".ckpt file"
        ) from exc
    policy.set_compile(compile)
    return policy


def progress_bar(total: int, enabled: bool, desc: str) -> tqdm:
    """A control-step progress bar; off when disabled or when stderr is not a terminal (tqdm's None)."""
    return tqdm(total=total, desc=desc, unit="step", disable=None if enabled else True, dynamic_ncols=True)


def run_block(result: RolloutResult) -> dict[str, Any]:
    """The per-mode block of ``eval_info.json`` / ``compare.json``."""
    return {**result.eval_info(), "warmup_ms": result.warmup_ms}


def fmt(v: Any, spec: str = ".1f") -> str:
    """``v`` formatted with ``spec``, or ``-`` for None/NaN."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)
