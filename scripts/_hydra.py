"""Shared plumbing of the Hydra entry points: schema registration, conversion to dataclasses, run dir.

Only `scripts/` imports Hydra; library code receives plain dataclasses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

CONFIG_PATH = "../configs"  # relative to this package: the repository's (or the wheel's) configs/
VERSION_BASE = "1.3"


def register_schema(name: str, node: type) -> None:
    """Register a dataclass as the structured schema ``name`` (typos and wrong types fail at compose)."""
    ConfigStore.instance().store(name=name, node=node)


def to_dataclass(cfg: DictConfig) -> Any:
    """Convert the composed config to its dataclass once; nothing after this line sees OmegaConf."""
    return OmegaConf.to_object(cfg)


def run_dir() -> Path:
    """The Hydra run directory of this job (Hydra >= 1.2 does not chdir into it)."""
    return Path(HydraConfig.get().runtime.output_dir)
