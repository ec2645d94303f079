"""parapolicy's library: the public surface of the diffusion-policy controller. Never imports Hydra.

Layout (arrows point down only; `tests/test_layout.py` checks them)::

    jobs        config.py, compare.py, profile.py, eval.py, bench.py, train.py, collect.py
      |         (one module per command: its Config dataclass and run function)
    control/    settings, the real-time controller, tasks, records, rollout entry points, plots
      |
    runtime/    denoiser wrappers: device layouts, CUDA graphs, timing, the auto window
    model/      networks, normaliser, DiffusionPolicy, EMA, checkpoints, training state
    data/       zarr replay store, training-window dataset
      |
    diffusion/  torch only: schedules, update rules, sequential and Picard samplers, warm start

The names below are imported lazily, on first use, so `import parapolicy.policy.config` stays free of
torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS = {
    "PolicyConfig": "config",
    "SamplerConfig": "config",
    "UNetConfig": "config",
    "NoiseScheduleConfig": "config",
    "VisionConfig": "config",
    "TransformerConfig": "config",
    "DiffusionPolicy": "model.policy",
    "ObservationError": "model.policy",
    "load_policy": "model.pretrained",
    "save_policy": "model.pretrained",
    "save_lerobot_policy": "model.lerobot_format",
    "CheckpointError": "model.checkpoint",
    "ControlConfig": "control.settings",
    "LatencyModel": "control.settings",
    "EvalConfig": "control.evaluation",
    "run_rollouts": "control.rollout",
    "evaluate_policy": "control.rollout",
    "RolloutResult": "control.records",
    "ReplayStore": "data.replay_store",
    "run_sampler": "diffusion.dispatch",
    "sample_sequential": "diffusion.sequential",
    "sample_picard": "diffusion.picard",
    "draw_noise": "diffusion.sequential",
    "SampleResult": "diffusion.sequential",
    "CompareConfig": "compare",
    "run_compare": "compare",
    "ProfileConfig": "profile",
    "run_profile": "profile",
    "EvalJobConfig": "eval",
    "run_eval": "eval",
    "Task": "control.task",
    "make_task": "control.tasks",
    "TrainConfig": "train",
    "CollectConfig": "collect",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'parapolicy.policy' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
