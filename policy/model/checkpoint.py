"""Checkpoint directories: safetensors + JSON only, never pickle; strict, versioned, atomic.

Layout of a pretrained-policy directory (what `policy.path=` points at)::

    config.json           {"schema_version": 1, "kind": "parapolicy-diffusion-policy", "policy": {...}}
                          (``REQUIRED_POLICY_FIELDS[schema_version]`` lists the fields it must hold)
    model.safetensors     weights: "ema.<name>" (used for inference) and optionally "raw.<name>"
    normalizer.safetensors  the min-max normaliser's buffers

A training checkpoint adds ``training_state/`` (see `training_state.py`). Directories are written to a
temporary sibling and renamed into place, so an interrupted save never leaves a half-written
checkpoint. Loading never calls `torch.load` or unpickles anything: a pickle file passed as a
checkpoint is refused before it is read.

No hydra imports.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from parapolicy.policy.errors import ParapolicyError

SCHEMA_VERSION = 1
CHECKPOINT_KIND = "parapolicy-diffusion-policy"
_NORMALISER_BOUND = re.compile(r"(^|\.)stats\.[^.]+\.(min|max)$")  # may be -inf / +inf: unbounded
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
NORMALIZER_FILE = "normalizer.safetensors"
# What each schema version requires in config.json's "policy" section: every field the weights or the
# training noise schedule depend on (the sampler is an inference choice and may be left to defaults).
REQUIRED_POLICY_FIELDS: dict[int, tuple[str, ...]] = {
    1: (
        "obs_dim",
        "action_dim",
        "horizon",
        "n_obs_steps",
        "n_action_steps",
        "unet.down_dims",
        "unet.diffusion_step_embed_dim",
        "unet.kernel_size",
        "unet.n_groups",
        "unet.cond_predict_scale",
        "schedule.num_train_timesteps",
        "schedule.beta_schedule",
        "schedule.beta_start",
        "schedule.beta_end",
        "schedule.prediction_type",
        "schedule.clip_sample",
        "schedule.clip_sample_range",
    ),
}
# What a ``network="transformer"`` policy also requires (its weights depend on every one of them).
TRANSFORMER_FIELDS = (
    "transformer.n_layer",
    "transformer.n_head",
    "transformer.n_emb",
    "transformer.causal_attn",
    "transformer.n_cond_layers",
)
# What an image policy (``obs_type="pixels_agent_pos"``) also requires: its encoder's layout and the
# transform of its pixels (a wrong crop can keep every weight's shape: ResNet-18 maps 84 and 96 px alike).
VISION_FIELDS = (
    "vision.image_shape",
    "vision.crop_shape",
    "vision.backbone",
    "vision.norm",
    "vision.pool",
    "vision.num_keypoints",
    "vision.image_mean",
    "vision.image_std",
)
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2, and torch.save's zip container


class CheckpointError(ParapolicyError, ValueError):
    """A checkpoint is missing, malformed, of an unknown schema, or does not match the model."""

    exit_code = 4


def _contiguous(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def write_atomic_dir(final: Path, write: Any) -> Path:
    """Run ``write(tmp_dir)`` into a fresh temporary sibling, then rename it to ``final``.

    Raises:
        FileExistsError: if ``final`` already exists (checkpoints are never overwritten).
    """
    final = Path(final)
    if final.exists():
        raise FileExistsError(f"refusing to overwrite existing checkpoint {final}")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        mode = _file_mode()  # safetensors writes 0600 whatever the umask: readable as the other files
        for file in (f for f in tmp.rglob("*") if f.is_file()):
            os.chmod(file, mode)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _file_mode() -> int:
    """The mode a new file gets under this process's umask (0644 under the usual 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def save_pretrained(
    path: str | Path,
    policy_config: Mapping[str, Any],
    ema_weights: Mapping[str, torch.Tensor],
    normalizer_state: Mapping[str, torch.Tensor],
    raw_weights: Mapping[str, torch.Tensor] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a pretrained-policy directory (atomically; never overwrites).

    Args:
        path: the directory to create.
        policy_config: JSON-serialisable policy config (``dataclasses.asdict`` of it).
        ema_weights: the network weights used for inference (the EMA copy when training).
        normalizer_state: the normaliser's buffers.
        raw_weights: optional raw (non-EMA) weights, kept by training checkpoints for resuming.
        metadata: optional extra JSON stored in ``config.json`` under ``"metadata"``.
    """
    config = {
        "schema_version": SCHEMA_VERSION,
        "kind": CHECKPOINT_KIND,
        "policy": dict(policy_config),
        "metadata": dict(metadata or {}),
    }
    text = json.dumps(config, indent=2, sort_keys=True)  # fails early on non-JSON values
    tensors = {f"ema.{k}": v for k, v in _contiguous(ema_weights).items()}
    if raw_weights is not None:
        tensors.update({f"raw.{k}": v for k, v in _contiguous(raw_weights).items()})

    def write(tmp: Path) -> None:
        (tmp / CONFIG_FILE).write_text(text)
        save_file(tensors, str(tmp / MODEL_FILE), metadata={"schema_version": str(SCHEMA_VERSION)})
        save_file(
            _contiguous(normalizer_state),
            str(tmp / NORMALIZER_FILE),
            metadata={"schema_version": str(SCHEMA_VERSION)},
        )

    return write_atomic_dir(Path(path), write)


def _looks_like_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return any(head.startswith(magic) for magic in _PICKLE_MAGIC)


def _pickle_hint(path: Path) -> str:
    if not _looks_like_pickle(path):
        return ""
    return (
        " It looks like a pickle / torch.save file: parapolicy never loads pickles (they can execute code)."
    )


def _required_fields(policy: Mapping[str, Any]) -> tuple[str, ...]:
    required = REQUIRED_POLICY_FIELDS[SCHEMA_VERSION]
    if policy.get("network") == "transformer":  # its sizes, not the (unused) U-Net's defaults
        required = (*required, *TRANSFORMER_FIELDS)
    if policy.get("obs_type") == "pixels_agent_pos":  # (absent: a low-dim policy, the default)
        required = (*required, *VISION_FIELDS)
    return required


def _missing_fields(policy: Mapping[str, Any]) -> list[str]:
    missing = []
    for name in _required_fields(policy):
        node: Any = policy
        for part in name.split("."):
            if not isinstance(node, Mapping) or part not in node:
                missing.append(name)
                break
            node = node[part]
    return missing


def read_config(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint directory's ``config.json``; returns its ``policy`` section.

    Raises:
        CheckpointError: if the path is not a checkpoint directory, the file is missing, empty, not
            UTF-8 JSON (e.g. a pickle renamed config.json), of another kind, or of an unknown schema
            version.
    """
    return _read_config_file(path)["policy"]


def check_required_fields(policy: Mapping[str, Any], source: str) -> None:
    """Every field in ``REQUIRED_POLICY_FIELDS[SCHEMA_VERSION]`` must be present in ``policy``: a
    checkpoint never silently takes a library default for something its weights depend on.

    Raises:
        CheckpointError: naming the missing fields and what the schema version requires.
    """
    missing = _missing_fields(policy)
    if missing:
        raise CheckpointError(
            f"{source} lacks required field(s) {', '.join('policy.' + m for m in missing)}; "
            f"schema_version {SCHEMA_VERSION} requires for this policy: {', '.join(_required_fields(policy))}"
        )


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``metadata`` section of a checkpoint directory's ``config.json`` (empty if none)."""
    meta = _read_config_file(path).get("metadata")
    return dict(meta) if isinstance(meta, dict) else {}


def _read_config_file(path: str | Path) -> dict[str, Any]:
    """The whole checked ``config.json`` of a checkpoint directory."""
    root = Path(path)
    if not root.exists():
        raise CheckpointError(f"checkpoint {root} does not exist")
    if root.is_file():
        raise CheckpointError(
            f"checkpoint {root} is a file; expected a directory with {CONFIG_FILE}, "
            f"{MODEL_FILE} and {NORMALIZER_FILE}.{_pickle_hint(root)}"
        )
    cfg_path = root / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"checkpoint {root} has no {CONFIG_FILE}")
    try:
        text = cfg_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(
            f"{cfg_path} is not a JSON text file (not UTF-8: {exc.reason} at byte {exc.start})."
            f"{_pickle_hint(cfg_path)}"
        ) from exc
    if not text.strip():
        raise CheckpointError(f"{cfg_path} is empty")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict) or config.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{cfg_path} is not a {CHECKPOINT_KIND} config")
    version = config.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CheckpointError(
            f"{cfg_path} has schema_version {version!r}; this parapolicy reads "
            f"schema_version {SCHEMA_VERSION}"
        )
    if not isinstance(config.get("policy"), dict):
        raise CheckpointError(f"{cfg_path} has no 'policy' section")
    return config


def read_tensors(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Read the tensors of a safetensors file whose names start with ``prefix`` (prefix removed).

    Raises:
        CheckpointError: if the file is missing, a pickle, truncated or otherwise unreadable.
    """
    if not path.is_file():
        raise CheckpointError(f"missing {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k[len(prefix) :]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read {path} (truncated or corrupt?): {exc}.{_pickle_hint(path)}"
        ) from exc


def check_finite(tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse NaN or infinite values (a diverged run's weights, a broken normaliser). A normaliser's
    ``stats.<key>.min`` may hold -inf and its ``max`` +inf: an unbounded (LeRobot IDENTITY) dimension.

    Raises:
        CheckpointError: naming the first tensor holding one and how many values are bad.
    """
    for name, value in tensors.items():
        if value.is_floating_point():
            bad = ~torch.isfinite(value)
            if _NORMALISER_BOUND.search(name):
                bad &= value != (-math.inf if name.endswith(".min") else math.inf)
            if bool(bad.any()):
                raise CheckpointError(
                    f"{source}: tensor {name!r} holds {int(bad.sum())} non-finite value(s) (NaN or inf) "
                    f"of {value.numel()}; refusing to load a policy that cannot plan"
                )


def check_state_dict(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], source: str
) -> None:
    """Strict match of names, shapes and dtypes, with every problem named.

    Raises:
        CheckpointError: listing missing keys, unexpected keys and shape/dtype mismatches.
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(found[k].shape)} {found[k].dtype}, model {tuple(v.shape)} {v.dtype}"
        for k, v in expected.items()
        if k in found and (found[k].shape != v.shape or found[k].dtype != v.dtype)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if mismatched:
        problems.append("shape/dtype mismatch: " + "; ".join(mismatched[:8]))
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + " | ".join(problems))
