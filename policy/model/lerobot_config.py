"""LeRobot diffusion configs: detection, the features a checkpoint conditions on, and the mapping between
LeRobot's ``DiffusionConfig`` fields and `PolicyConfig` (both ways; see `lerobot_format.py`). No hydra."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from parapolicy.policy.config import (
    NoiseScheduleConfig,
    PolicyConfig,
    SamplerConfig,
    UNetConfig,
    VisionConfig,
)
from parapolicy.policy.model.checkpoint import CONFIG_FILE, CheckpointError

LEROBOT_TYPE = "diffusion"
PREPROCESSOR_FILE = "policy_preprocessor.json"
POSTPROCESSOR_FILE = "policy_postprocessor.json"
PRE_STATE_FILE = "policy_preprocessor_step_3_normalizer_processor.safetensors"
POST_STATE_FILE = "policy_postprocessor_step_0_unnormalizer_processor.safetensors"
STATE_FEATURE = "observation.state"
ENV_FEATURE = "observation.environment_state"
IMAGE_FEATURE = "observation.image"
ACTION_FEATURE = "action"
LEROBOT_EPS = 1e-8  # the normalisers' eps (0.3.x adds it to every MIN_MAX / MEAN_STD denominator)
_SCHEDULERS = {"DDPM": "ddpm", "DDIM": "ddim"}


def refuse(root: Path, what: str) -> CheckpointError:
    return CheckpointError(f"LeRobot checkpoint {root}: {what}")


# ------------------------------------------------------------------------------------------------
# detection and config


def is_lerobot_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a directory whose config.json is a LeRobot policy config (has ``"type"``)."""
    cfg = Path(path) / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        data = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "type" in data and "kind" not in data


def _features(root: Path, cfg: Mapping[str, Any], section: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    raw = cfg.get(section)
    if not isinstance(raw, dict) or not raw:
        raise refuse(root, f"config.json has no {section}")
    out = {}
    for name, ft in raw.items():
        if not isinstance(ft, dict) or "type" not in ft or "shape" not in ft:
            raise refuse(root, f"config.json {section}[{name!r}] needs 'type' and 'shape'")
        out[name] = (str(ft["type"]), tuple(int(d) for d in ft["shape"]))
    return out


class LeRobotLayout:
    """Which LeRobot features feed the policy, and how (derived from config.json).

    Attributes:
        state: (name, Ds) of the STATE feature.
        env: (name, De) of the ENV feature, or None.
        image: (name, (C, H, W)) of the one VISUAL feature, or None.
        action: (name, Da).
        separate_encoder: whether the weights sit under ``rgb_encoder.0.`` (one camera, separate encoders).
    """

    def __init__(self, root: Path, cfg: Mapping[str, Any]) -> None:
        inputs = _features(root, cfg, "input_features")
        outputs = _features(root, cfg, "output_features")
        by_type: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
        for name, (kind, shape) in inputs.items():
            by_type.setdefault(kind, []).append((name, shape))
        unknown = sorted(set(by_type) - {"STATE", "ENV", "VISUAL"})
        if unknown:
            raise refuse(root, f"input feature type(s) {unknown} are not supported (STATE, ENV, VISUAL)")
        if len(by_type.get("STATE", [])) != 1:
            raise refuse(root, "needs exactly one STATE input feature (LeRobot's observation.state)")
        images = by_type.get("VISUAL", [])
        if len(images) > 1:
            raise refuse(
                root,
                f"{len(images)} cameras ({[n for n, _ in images]}); only single-camera image policies are "
                "supported",
            )
        envs = by_type.get("ENV", [])
        if images and envs:
            raise refuse(root, "conditions on both images and an environment state; not supported")
        if not images and not envs:
            raise refuse(root, "has neither an image nor an environment-state input")
        actions = [(n, s) for n, (k, s) in outputs.items() if k == "ACTION"]
        if len(actions) != 1 or len(outputs) != 1:
            raise refuse(root, f"needs exactly one ACTION output feature, got {sorted(outputs)}")
        self.state = (by_type["STATE"][0][0], _flat_dim(root, by_type["STATE"][0]))
        self.env = (envs[0][0], _flat_dim(root, envs[0])) if envs else None
        self.image = images[0] if images else None
        self.action = (actions[0][0], _flat_dim(root, actions[0]))
        self.separate_encoder = bool(cfg.get("use_separate_rgb_encoder_per_camera", False))


def _flat_dim(root: Path, feature: tuple[str, tuple[int, ...]]) -> int:
    name, shape = feature
    if len(shape) != 1:
        raise refuse(root, f"feature {name!r} has shape {shape}; a vector is needed")
    return shape[0]


def _get(root: Path, cfg: Mapping[str, Any], key: str) -> Any:
    if key not in cfg:
        raise refuse(root, f"config.json lacks {key!r}")
    return cfg[key]


def _vision_config(root: Path, cfg: Mapping[str, Any], layout: LeRobotLayout) -> VisionConfig:
    """The image encoder's settings of a LeRobot ``DiffusionConfig`` dict (the defaults for a
    state-only policy); refuses a backbone other than ResNet-18."""
    if layout.image is None:
        return VisionConfig()
    g = lambda key: _get(root, cfg, key)  # noqa: E731
    backbone = g("vision_backbone")
    if backbone != "resnet18":
        raise refuse(root, f"vision_backbone {backbone!r} is unknown here (only 'resnet18')")
    crop = g("crop_shape")
    return VisionConfig(
        image_shape=layout.image[1],
        crop_shape=tuple(crop) if crop is not None else None,
        crop_is_random=bool(cfg.get("crop_is_random", True)),
        backbone=backbone,
        norm="group_norm" if g("use_group_norm") else "batch_norm",
        num_keypoints=int(g("spatial_softmax_num_keypoints")),
    )


def policy_config_from_lerobot(root: Path, cfg: Mapping[str, Any], layout: LeRobotLayout) -> PolicyConfig:
    """The `PolicyConfig` of a LeRobot ``DiffusionConfig`` dict; refuses what cannot be represented."""
    g = lambda key: _get(root, cfg, key)  # noqa: E731
    if cfg.get("type") != LEROBOT_TYPE:
        raise refuse(root, f"policy type {cfg.get('type')!r} is not supported; only {LEROBOT_TYPE!r}")
    if int(g("n_groups")) != 8:
        raise refuse(
            root,
            f"n_groups={g('n_groups')}: LeRobot's final Conv1dBlock always has 8 groups while this "
            "project's follows n_groups; only n_groups=8 can be represented",
        )
    scheduler = g("noise_scheduler_type")
    if scheduler not in _SCHEDULERS:
        raise refuse(root, f"noise_scheduler_type {scheduler!r} is not supported ({sorted(_SCHEDULERS)})")
    if cfg.get("resize_shape") is not None:
        raise refuse(root, f"resize_shape={cfg['resize_shape']} (image resizing) is not supported")
    n_steps = cfg.get("num_inference_steps") or g("num_train_timesteps")
    try:
        vision = _vision_config(root, cfg, layout)
        obs_dim = layout.state[1] + (layout.env[1] if layout.env else 0)
        return PolicyConfig(
            obs_dim=obs_dim,
            obs_type="pixels_agent_pos" if layout.image else "state",
            vision=vision,
            action_dim=layout.action[1],
            horizon=int(g("horizon")),
            n_obs_steps=int(g("n_obs_steps")),
            n_action_steps=int(g("n_action_steps")),
            unet=UNetConfig(
                down_dims=tuple(g("down_dims")),
                diffusion_step_embed_dim=int(g("diffusion_step_embed_dim")),
                kernel_size=int(g("kernel_size")),
                n_groups=8,
                cond_predict_scale=bool(g("use_film_scale_modulation")),
            ),
            schedule=NoiseScheduleConfig(
                num_train_timesteps=int(g("num_train_timesteps")),
                beta_schedule=g("beta_schedule"),
                beta_start=float(g("beta_start")),
                beta_end=float(g("beta_end")),
                prediction_type=g("prediction_type"),
                clip_sample=bool(g("clip_sample")),
                clip_sample_range=float(g("clip_sample_range")),
            ),
            sampler=SamplerConfig(kind=_SCHEDULERS[scheduler], num_inference_steps=int(n_steps)),
        )
    except (ValueError, TypeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise refuse(root, f"config cannot be represented: {exc}") from exc


def _check_representable(config: PolicyConfig) -> None:
    """Refuse (ValueError naming the setting) what LeRobot's diffusion policy cannot represent."""
    u, s, sp = config.unet, config.schedule, config.sampler
    if config.network != "unet":
        raise ValueError(f"network={config.network!r}: LeRobot's diffusion policy is a U-Net")
    if u.n_groups != 8:
        raise ValueError(f"unet.n_groups={u.n_groups}: LeRobot's final block always has 8 groups")
    if sp.kind not in _SCHEDULERS.values() or sp.timestep_spacing != "leading" or sp.steps_offset != 0:
        raise ValueError(
            f"sampler kind={sp.kind!r}, spacing={sp.timestep_spacing!r}, offset={sp.steps_offset}: LeRobot "
            "runs diffusers' DDPM or DDIM with leading spacing and offset 0 (set the sampler to ddpm or ddim)"
        )
    if sp.kind == "ddim" and not sp.set_alpha_to_one:
        raise ValueError("sampler.set_alpha_to_one=False: LeRobot's DDIM uses diffusers' default (True)")
    if s.prediction_type not in ("epsilon", "sample"):
        raise ValueError(f"prediction_type={s.prediction_type!r}: LeRobot supports epsilon and sample")
    if config.obs_type == "pixels_agent_pos" and config.vision.pool != "spatial_softmax":
        raise ValueError(
            f"vision.pool={config.vision.pool!r}: LeRobot's image encoder always ends in a spatial softmax"
        )


def _input_features(config: PolicyConfig, state_dim: int) -> dict[str, Any]:
    """LeRobot's ``input_features``: the image (image policies) or the environment state, and the
    agent state (an image policy's whole low-dim observation; ``state_dim`` splits a low-dim one)."""
    if config.obs_type == "pixels_agent_pos":
        state = {STATE_FEATURE: {"type": "STATE", "shape": [config.obs_dim]}}
        return {IMAGE_FEATURE: {"type": "VISUAL", "shape": list(config.vision.image_shape)}, **state}
    inputs: dict[str, Any] = {STATE_FEATURE: {"type": "STATE", "shape": [state_dim]}}
    inputs[ENV_FEATURE] = {"type": "ENV", "shape": [config.obs_dim - state_dim]}
    return inputs


def lerobot_config_from_policy(config: PolicyConfig, state_dim: int) -> dict[str, Any]:
    """The config.json of `save_lerobot_policy`: every field LeRobot 0.4's DiffusionConfig writes.

    Raises:
        ValueError: for what LeRobot cannot represent (`_check_representable`: a transformer network,
            n_groups != 8, a sampler other than DDPM / DDIM with leading spacing and offset 0,
            v-prediction, an average-pooled image encoder).
    """
    _check_representable(config)
    u, s, sp, v = config.unet, config.schedule, config.sampler, config.vision
    return {
        "type": LEROBOT_TYPE,
        "n_obs_steps": config.n_obs_steps,
        "normalization_mapping": {
            "VISUAL": "MEAN_STD",
            "STATE": "MIN_MAX",
            "ACTION": "MIN_MAX",
            "ENV": "MIN_MAX",
        },
        "input_features": _input_features(config, state_dim),
        "output_features": {ACTION_FEATURE: {"type": "ACTION", "shape": [config.action_dim]}},
        "device": "cpu",
        "use_amp": False,
        "push_to_hub": False,
        "repo_id": None,
        "private": None,
        "tags": None,
        "license": None,
        "horizon": config.horizon,
        "n_action_steps": config.n_action_steps,
        "drop_n_last_frames": config.horizon - config.n_action_steps - config.n_obs_steps + 1,
        "vision_backbone": v.backbone,
        "crop_shape": list(v.crop_shape) if v.crop_shape is not None else None,
        "crop_is_random": v.crop_is_random,
        "pretrained_backbone_weights": None,
        "use_group_norm": v.norm == "group_norm",
        "spatial_softmax_num_keypoints": v.num_keypoints,
        "use_separate_rgb_encoder_per_camera": False,
        "down_dims": list(u.down_dims),
        "kernel_size": u.kernel_size,
        "n_groups": u.n_groups,
        "diffusion_step_embed_dim": u.diffusion_step_embed_dim,
        "use_film_scale_modulation": u.cond_predict_scale,
        "noise_scheduler_type": {kind: name for name, kind in _SCHEDULERS.items()}[sp.kind],
        "num_train_timesteps": s.num_train_timesteps,
        "beta_schedule": s.beta_schedule,
        "beta_start": s.beta_start,
        "beta_end": s.beta_end,
        "prediction_type": s.prediction_type,
        "clip_sample": s.clip_sample,
        "clip_sample_range": s.clip_sample_range,
        "num_inference_steps": sp.num_inference_steps,
        "do_mask_loss_for_padding": False,
        "optimizer_lr": 1e-4,
        "optimizer_betas": [0.95, 0.999],
        "optimizer_eps": 1e-8,
        "optimizer_weight_decay": 1e-6,
        "scheduler_name": "cosine",
        "scheduler_warmup_steps": 500,
    }
