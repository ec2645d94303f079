"""Provenance recorded with every result file: versions, device, git commit (no hydra)."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch


def git_sha() -> str | None:
    """The checkout's commit, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Versions and machine facts for result files."""
    dev = torch.device(device)
    return {
        "git_sha": git_sha(),
        "pkg_version": metadata.version("parapolicy"),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
    }
