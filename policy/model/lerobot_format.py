"""LeRobot diffusion-policy checkpoint directories, in and out (safetensors and JSON only; no lerobot import).

A LeRobot diffusion directory holds ``config.json`` (``"type": "diffusion"``, the ``DiffusionConfig``
fields) and ``model.safetensors`` (``diffusion.unet.*``, ``diffusion.rgb_encoder.*``). Its normalisation
statistics are in one of two layouts:

- 0.3.x: inside model.safetensors, as ``normalize_inputs.buffer_<feature>.{mean,std,min,max}``,
  ``normalize_targets.buffer_action.*`` and ``unnormalize_outputs.buffer_action.*``
  (MIN_MAX there is ``(x - min) / (max - min + 1e-8) * 2 - 1``);
- 0.4 and later: ``policy_preprocessor.json`` / ``policy_postprocessor.json`` whose
  ``normalizer_processor`` / ``unnormalizer_processor`` steps name their safetensors state file
  (keys ``<feature>.<stat>``; MIN_MAX ``2 (x - min) / (max - min) - 1``, eps only where max == min).

This module loads and saves; `lerobot_config.py` maps the configs, `lerobot_names.py` the weight
names, `lerobot_stats.py` the statistics. `load_lerobot_policy` builds a `DiffusionPolicy` from the
checkpoint's own config (never from library defaults), checks the mapped weights strictly against it
(every tensor used, none missing, equal shapes) and refuses, naming the reason, what it cannot
represent. `save_lerobot_policy` writes the
0.4+ layout. Key mapping (LeRobot -> ours): ``diffusion.unet.`` -> the U-Net (``unet.`` in image
policies), ``.conv1.``/``.conv2.`` of residual blocks -> ``.blocks.0.``/``.blocks.1.``, the bare
down/up-sampling convs ``{down,up}_modules.i.2.*`` -> ``...2.conv.*``; ``diffusion.rgb_encoder.`` (or
``diffusion.rgb_encoder.0.`` with one separate camera encoder) -> ``rgb_encoder.``.

Observation layouts: an image policy conditions per step on [state, image features], as LeRobot does.
A low-dim LeRobot policy (``observation.state`` + ``observation.environment_state``) becomes a ``state``
policy whose observation is [environment_state, state] (this project's PushT layout: keypoints, then
the agent); the FiLM weights' columns are permuted to match, exactly, in both directions.

No hydra imports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from parapolicy.policy.model.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    check_finite,
    check_state_dict,
    read_tensors,
    write_atomic_dir,
)
from parapolicy.policy.model.lerobot_config import (
    LEROBOT_TYPE,
    POST_STATE_FILE,
    POSTPROCESSOR_FILE,
    PRE_STATE_FILE,
    PREPROCESSOR_FILE,
    LeRobotLayout,
    is_lerobot_checkpoint,
    lerobot_config_from_policy,
    policy_config_from_lerobot,
    refuse,
)
from parapolicy.policy.model.lerobot_names import (
    film_permutation,
    lerobot_to_ours,
    ours_to_lerobot,
    permute_film,
)
from parapolicy.policy.model.lerobot_stats import (
    affine_stats,
    image_stats,
    lerobot_stats,
    normalizer_state,
    processor_configs,
    restore_legacy_name,
    stats_and_modes,
)
from parapolicy.policy.model.policy import OBS_KEY, DiffusionPolicy
from parapolicy.policy.model.vision import build_network

__all__ = ["is_lerobot_checkpoint", "lerobot_tensors", "load_lerobot_policy", "save_lerobot_policy"]

# ------------------------------------------------------------------------------------------------
# load


def _renamed_weights(
    root: Path, model: dict[str, torch.Tensor], image: bool, separate_encoder: bool
) -> dict[str, torch.Tensor]:
    """LeRobot's tensors under this project's names (`lerobot_to_ours`); refuses a tensor that maps
    to nothing here."""
    weights: dict[str, torch.Tensor] = {}
    unexpected = []
    for name, tensor in model.items():
        ours = lerobot_to_ours(name, image, separate_encoder)
        if ours is None:
            unexpected.append(name)
        else:
            weights[ours] = tensor
    if unexpected:
        raise refuse(root, f"{MODEL_FILE} has tensors this policy does not use: {sorted(unexpected)[:8]}")
    return weights


def load_lerobot_policy(path: str | Path) -> DiffusionPolicy:
    """Build a `DiffusionPolicy` from a LeRobot diffusion directory (0.3.x or 0.4+ layout), strictly.

    Raises:
        CheckpointError: naming what is missing, unexpected, misshaped, or not representable here.
    """
    root = Path(path)
    try:
        cfg = json.loads((root / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise refuse(root, f"config.json is not readable JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise refuse(root, "config.json is not a JSON object")
    layout = LeRobotLayout(root, cfg) if cfg.get("type") == LEROBOT_TYPE else None
    if layout is None:
        raise refuse(root, f"policy type {cfg.get('type')!r} is not supported; only {LEROBOT_TYPE!r}")
    config = policy_config_from_lerobot(root, cfg, layout)
    model = read_tensors(root / MODEL_FILE)
    inputs, outputs, modes, legacy, only = stats_and_modes(root, cfg, model)
    if legacy:  # 0.3.x names buffers by the feature name with dots replaced
        inputs = {restore_legacy_name(k, layout): v for k, v in inputs.items()}
        outputs = {restore_legacy_name(k, layout): v for k, v in outputs.items()}
    image = layout.image is not None

    weights = _renamed_weights(root, model, image, layout.separate_encoder)
    state_dim = layout.state[1]
    weights = permute_film(weights, film_permutation(config, state_dim, to_ours=True))

    def mode_of(feature: str, kind: str) -> str:
        if only is not None and kind != "ACTION" and feature not in only:
            return "IDENTITY"
        return str(modes.get(kind, "IDENTITY"))

    name, dim = layout.state
    obs_parts = [affine_stats(root, inputs, name, mode_of(name, "STATE"), dim, legacy)]
    if layout.env is not None:  # our observation: [env, state]
        name, dim = layout.env
        obs_parts.insert(0, affine_stats(root, inputs, name, mode_of(name, "ENV"), dim, legacy))
    name, dim = layout.action
    act = affine_stats(root, outputs, name, mode_of(name, "ACTION"), dim, legacy)
    if image:
        name, shape = layout.image
        mean, std = image_stats(root, inputs, name, mode_of(name, "VISUAL"), shape[0])
        config.vision.image_mean, config.vision.image_std = mean, std

    with torch.device("meta"):  # names and shapes checked before anything is allocated or computed
        expected = build_network(config).state_dict()
    check_state_dict(expected, weights, f"{root / MODEL_FILE} (LeRobot names mapped)")
    check_finite(weights, f"{root / MODEL_FILE}")
    policy = DiffusionPolicy(config)
    policy.network.load_state_dict(weights, strict=True)
    stats = {**normalizer_state(OBS_KEY, obs_parts), **normalizer_state("action", [act])}
    try:
        policy.normalizer.load_state_dict(stats, strict=True)
    except ValueError as exc:
        raise refuse(root, f"normalisation statistics are unusable: {exc}") from exc
    return policy.eval()


# ------------------------------------------------------------------------------------------------
# save


def lerobot_tensors(
    policy: DiffusionPolicy, state_dim: int = 2
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json dict, model.safetensors tensors) of ``policy`` under LeRobot's names."""
    config = policy.config
    cfg = lerobot_config_from_policy(config, state_dim)
    image = config.obs_type == "pixels_agent_pos"
    if not image and not 0 < state_dim < config.obs_dim:
        raise ValueError(
            f"state_dim={state_dim} must split the {config.obs_dim}-d observation into environment_state "
            "and state (LeRobot needs both)"
        )
    weights = {k: v.detach().cpu() for k, v in policy.network.state_dict().items()}
    weights = permute_film(weights, film_permutation(config, state_dim, to_ours=False))
    return cfg, {ours_to_lerobot(k, image): v.contiguous() for k, v in weights.items()}


def save_lerobot_policy(policy: DiffusionPolicy, path: str | Path, state_dim: int = 2) -> Path:
    """Write ``policy`` as a LeRobot 0.4+ diffusion directory (atomically; never overwrites).

    Args:
        policy: the policy (its network weights are written; pass the EMA policy).
        path: the directory to create.
        state_dim: low-dim policies only: the last ``state_dim`` observation dimensions become
            ``observation.state`` and the rest ``observation.environment_state``.

    Raises:
        ValueError: for what LeRobot cannot represent (see `lerobot_config_from_policy`, `lerobot_stats`).
        FileExistsError: if ``path`` exists.
    """
    cfg, tensors = lerobot_tensors(policy, state_dim)
    pre_stats, post_stats = lerobot_stats(policy, state_dim)
    pre, post = processor_configs(cfg)

    def write(tmp: Path) -> None:
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=4))
        save_file(tensors, str(tmp / MODEL_FILE))
        (tmp / PREPROCESSOR_FILE).write_text(json.dumps(pre, indent=2))
        (tmp / POSTPROCESSOR_FILE).write_text(json.dumps(post, indent=2))
        save_file(pre_stats, str(tmp / PRE_STATE_FILE))
        save_file(post_stats, str(tmp / POST_STATE_FILE))

    return write_atomic_dir(Path(path), write)
