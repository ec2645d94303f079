"""The export job (`parapolicy-export`): write a policy checkpoint in another format; no hydra.

``format=lerobot`` writes a LeRobot diffusion directory in the 0.4+ layout (config.json with
``"type": "diffusion"``, model.safetensors under LeRobot's key names, policy_preprocessor.json /
policy_postprocessor.json and their normaliser safetensors; see `model/lerobot_format.py`).
``format=parapolicy`` writes this project's own directory (safetensors + JSON, `model/checkpoint.py`),
e.g. to convert a Diffusion Policy ``.ckpt`` once instead of reading its pickle at every load. Both are
read back by `load_policy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from parapolicy.policy.config import shipped_path
from parapolicy.policy.errors import ConfigError, RunFolderError
from parapolicy.policy.model.lerobot_format import save_lerobot_policy
from parapolicy.policy.model.pretrained import load_policy, save_policy

FORMATS = ("lerobot", "parapolicy")


@dataclass
class ExportConfig:
    """`parapolicy-export` settings."""

    policy_path: str = "???"
    """The checkpoint to export (a parapolicy or LeRobot directory, or a Diffusion Policy ``.ckpt``)."""
    format: str = "lerobot"
    """Target format: ``lerobot`` (LeRobot 0.4+ diffusion directory) or ``parapolicy`` (this project's)."""
    output_path: str = "???"
    """The directory to create (never overwritten)."""
    state_dim: int = 2
    """Low-dim policies: the last ``state_dim`` observation dimensions become ``observation.state`` (the
    agent position in the PushT layout) and the rest ``observation.environment_state``."""

    def __post_init__(self) -> None:
        self.policy_path = shipped_path(self.policy_path)
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.state_dim < 1:
            raise ValueError(f"state_dim must be >= 1, got {self.state_dim}")


def run_export(cfg: ExportConfig) -> Path:
    """Load ``cfg.policy_path`` strictly and write it to ``cfg.output_path``; returns the new directory.

    Raises:
        CheckpointError: the input checkpoint is bad.
        ConfigError: the target format cannot represent the policy (the message says what).
        RunFolderError: ``output_path`` exists.
    """
    out = Path(cfg.output_path)
    if out.exists():
        raise RunFolderError(f"refusing to overwrite existing {out}")
    policy = load_policy(cfg.policy_path)
    try:
        if cfg.format == "parapolicy":
            return save_policy(policy, out, metadata={"exported_from": str(cfg.policy_path)})
        return save_lerobot_policy(policy, out, state_dim=cfg.state_dim)
    except FileExistsError as exc:  # created meanwhile (the writers never overwrite)
        raise RunFolderError(str(exc)) from exc
    except ValueError as exc:
        raise ConfigError(f"format={cfg.format} cannot represent {cfg.policy_path}: {exc}") from exc
