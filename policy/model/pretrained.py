"""Save and load a `DiffusionPolicy` as a checkpoint directory (see `checkpoint.py`; no hydra)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from parapolicy.policy.config import PolicyConfig, SamplerConfig, shipped_path
from parapolicy.policy.errors import check_device
from parapolicy.policy.model.checkpoint import (
    MODEL_FILE,
    NORMALIZER_FILE,
    CheckpointError,
    check_finite,
    check_required_fields,
    check_state_dict,
    read_config,
    read_tensors,
    save_pretrained,
)
from parapolicy.policy.model.diffusion_policy_format import (
    is_diffusion_policy_checkpoint,
    load_diffusion_policy_checkpoint,
)
from parapolicy.policy.model.lerobot_format import is_lerobot_checkpoint, load_lerobot_policy
from parapolicy.policy.model.policy import DiffusionPolicy


def save_policy(
    policy: DiffusionPolicy,
    path: str | Path,
    raw_weights: Mapping[str, torch.Tensor] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``policy`` (its network weights as the inference "ema" weights) to a new directory.

    Args:
        policy: the policy whose network weights are used for inference (pass the EMA policy).
        path: directory to create (never overwritten).
        raw_weights: optional raw network weights to keep beside them (training checkpoints).
        metadata: extra JSON for ``config.json``.
    """
    return save_pretrained(
        path,
        policy.config.to_dict(),
        policy.network.state_dict(),
        policy.normalizer.state_dict(),
        raw_weights=raw_weights,
        metadata=metadata,
    )


def load_policy(
    path: str | Path, device: torch.device | str = "cpu", sampler: SamplerConfig | None = None
) -> DiffusionPolicy:
    """Load a policy from a checkpoint directory, strictly; nothing is returned half-loaded.

    Args:
        path: the checkpoint directory (``config.json``, ``model.safetensors``, ``normalizer.safetensors``),
            a LeRobot diffusion directory in the 0.3.x or 0.4+ layout (`lerobot_format.py`), or a
            Diffusion Policy ``.ckpt`` file of a U-Net or transformer policy (low-dim or image)
            (`diffusion_policy_format.py`; read as data, its pickled code never runs). A relative
            ``assets/...`` path names a shipped policy from any working directory (`config.shipped_path`).
        device: where to put the policy.
        sampler: optional inference sampler replacing the one saved in the config. ``window="auto"``
            is refused: choosing the window times the network, which is a job's step (load, then
            `parapolicy.policy.runtime.auto_window.resolve_sampler`, then `set_sampler`, and record the
            report it returns).

    Raises:
        ValueError: when ``sampler.window`` is ``"auto"``.
        CheckpointError: on a missing or malformed file, an unknown schema version, a pickle (other than
            the data of a Diffusion Policy checkpoint), any missing, unexpected or misshaped tensor, or a
            NaN/inf weight or normaliser value.
        DeviceUnavailableError: ``device`` does not exist on this machine (e.g. cuda without CUDA).
    """
    check_device(str(device))
    root = Path(shipped_path(str(path)))
    if is_diffusion_policy_checkpoint(root):
        loader = load_diffusion_policy_checkpoint
    elif is_lerobot_checkpoint(root):
        loader = load_lerobot_policy
    else:
        loader = _load_parapolicy
    policy = loader(root).to(device).eval()
    if sampler is not None:
        policy.set_sampler(sampler)  # raises on an unresolved window="auto"
    return policy


def _load_parapolicy(root: Path) -> DiffusionPolicy:
    config_dict = read_config(root)
    try:
        config = PolicyConfig.from_dict(config_dict)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{root / 'config.json'} holds an invalid policy config: {exc}") from exc
    check_required_fields(config_dict, str(root / "config.json"))
    policy = DiffusionPolicy(config)
    weights = read_tensors(root / MODEL_FILE, prefix="ema.")
    check_state_dict(policy.network.state_dict(), weights, f"{root / MODEL_FILE}")
    check_finite(weights, f"{root / MODEL_FILE}")
    stats = read_tensors(root / NORMALIZER_FILE)
    check_state_dict(policy.normalizer.state_dict(), stats, f"{root / NORMALIZER_FILE}")
    check_finite(stats, f"{root / NORMALIZER_FILE}")
    policy.network.load_state_dict(weights, strict=True)
    policy.normalizer.load_state_dict(stats, strict=True)
    return policy


def load_raw_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The raw (non-EMA) network weights of a training checkpoint (empty if it has none)."""
    return read_tensors(Path(path) / MODEL_FILE, prefix="raw.")
