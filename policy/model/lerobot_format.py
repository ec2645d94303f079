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

`load_lerobot_policy` builds a `DiffusionPolicy` from the checkpoint's own config (never from library
defaults), checks the mapped weights strictly against it (every tensor used, none missing, equal
shapes) and refuses, naming the reason, what it cannot represent. `save_lerobot_policy` writes the
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from parapolicy.policy.config import (
    NoiseScheduleConfig,
    PolicyConfig,
    SamplerConfig,
    UNetConfig,
    VisionConfig,
)
from parapolicy.policy.model.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    CheckpointError,
    check_state_dict,
    read_tensors,
    write_atomic_dir,
)
from parapolicy.policy.model.normalizer import DEFAULT_RANGE_EPS
from parapolicy.policy.model.policy import OBS_KEY, DiffusionPolicy

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
# processor steps a policy pipeline may hold that do not change the values this project computes
_PASSIVE_STEPS = {"rename_observations_processor", "to_batch_processor", "device_processor"}
_SCHEDULERS = {"DDPM": "ddpm", "DDIM": "ddim"}
_NORM_MODES = ("MIN_MAX", "MEAN_STD", "IDENTITY")


def _refuse(root: Path, what: str) -> CheckpointError:
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
        raise _refuse(root, f"config.json has no {section}")
    out = {}
    for name, ft in raw.items():
        if not isinstance(ft, dict) or "type" not in ft or "shape" not in ft:
            raise _refuse(root, f"config.json {section}[{name!r}] needs 'type' and 'shape'")
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
            raise _refuse(root, f"input feature type(s) {unknown} are not supported (STATE, ENV, VISUAL)")
        if len(by_type.get("STATE", [])) != 1:
            raise _refuse(root, "needs exactly one STATE input feature (LeRobot's observation.state)")
        images = by_type.get("VISUAL", [])
        if len(images) > 1:
            raise _refuse(
                root,
                f"{len(images)} cameras ({[n for n, _ in images]}); only single-camera image policies are "
                "supported",
            )
        envs = by_type.get("ENV", [])
        if images and envs:
            raise _refuse(root, "conditions on both images and an environment state; not supported")
        if not images and not envs:
            raise _refuse(root, "has neither an image nor an environment-state input")
        actions = [(n, s) for n, (k, s) in outputs.items() if k == "ACTION"]
        if len(actions) != 1 or len(outputs) != 1:
            raise _refuse(root, f"needs exactly one ACTION output feature, got {sorted(outputs)}")
        self.state = (by_type["STATE"][0][0], _flat_dim(root, by_type["STATE"][0]))
        self.env = (envs[0][0], _flat_dim(root, envs[0])) if envs else None
        self.image = images[0] if images else None
        self.action = (actions[0][0], _flat_dim(root, actions[0]))
        self.separate_encoder = bool(cfg.get("use_separate_rgb_encoder_per_camera", False))


def _flat_dim(root: Path, feature: tuple[str, tuple[int, ...]]) -> int:
    name, shape = feature
    if len(shape) != 1:
        raise _refuse(root, f"feature {name!r} has shape {shape}; a vector is needed")
    return shape[0]


def _get(root: Path, cfg: Mapping[str, Any], key: str) -> Any:
    if key not in cfg:
        raise _refuse(root, f"config.json lacks {key!r}")
    return cfg[key]


def policy_config_from_lerobot(root: Path, cfg: Mapping[str, Any], layout: LeRobotLayout) -> PolicyConfig:
    """The `PolicyConfig` of a LeRobot ``DiffusionConfig`` dict; refuses what cannot be represented."""
    g = lambda key: _get(root, cfg, key)  # noqa: E731
    if cfg.get("type") != LEROBOT_TYPE:
        raise _refuse(root, f"policy type {cfg.get('type')!r} is not supported; only {LEROBOT_TYPE!r}")
    if int(g("n_groups")) != 8:
        raise _refuse(
            root,
            f"n_groups={g('n_groups')}: LeRobot's final Conv1dBlock always has 8 groups while this "
            "project's follows n_groups; only n_groups=8 can be represented",
        )
    scheduler = g("noise_scheduler_type")
    if scheduler not in _SCHEDULERS:
        raise _refuse(root, f"noise_scheduler_type {scheduler!r} is not supported ({sorted(_SCHEDULERS)})")
    if cfg.get("resize_shape") is not None:
        raise _refuse(root, f"resize_shape={cfg['resize_shape']} (image resizing) is not supported")
    n_steps = cfg.get("num_inference_steps") or g("num_train_timesteps")
    try:
        vision = VisionConfig()
        if layout.image is not None:
            backbone = g("vision_backbone")
            if backbone != "resnet18":
                raise _refuse(root, f"vision_backbone {backbone!r} is unknown here (only 'resnet18')")
            crop = g("crop_shape")
            vision = VisionConfig(
                image_shape=layout.image[1],
                crop_shape=tuple(crop) if crop is not None else None,
                crop_is_random=bool(cfg.get("crop_is_random", True)),
                backbone=backbone,
                norm="group_norm" if g("use_group_norm") else "batch_norm",
                num_keypoints=int(g("spatial_softmax_num_keypoints")),
            )
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
        raise _refuse(root, f"config cannot be represented: {exc}") from exc


def lerobot_config_from_policy(config: PolicyConfig, state_dim: int) -> dict[str, Any]:
    """The config.json of `save_lerobot_policy`: every field LeRobot 0.4's DiffusionConfig writes.

    Raises:
        ValueError: for what LeRobot cannot represent (n_groups != 8, a sampler other than DDPM / DDIM
            with leading spacing and offset 0, v-prediction).
    """
    u, s, sp = config.unet, config.schedule, config.sampler
    if u.n_groups != 8:
        raise ValueError(f"unet.n_groups={u.n_groups}: LeRobot's final block always has 8 groups")
    kinds = {v: k for k, v in _SCHEDULERS.items()}
    if sp.kind not in kinds or sp.timestep_spacing != "leading" or sp.steps_offset != 0:
        raise ValueError(
            f"sampler kind={sp.kind!r}, spacing={sp.timestep_spacing!r}, offset={sp.steps_offset}: LeRobot "
            "runs diffusers' DDPM or DDIM with leading spacing and offset 0 (set the sampler to ddpm or ddim)"
        )
    if sp.kind == "ddim" and not sp.set_alpha_to_one:
        raise ValueError("sampler.set_alpha_to_one=False: LeRobot's DDIM uses diffusers' default (True)")
    if s.prediction_type not in ("epsilon", "sample"):
        raise ValueError(f"prediction_type={s.prediction_type!r}: LeRobot supports epsilon and sample")
    image = config.obs_type == "pixels_agent_pos"
    v = config.vision
    inputs: dict[str, Any] = {STATE_FEATURE: {"type": "STATE", "shape": [state_dim]}}
    if image:
        inputs = {IMAGE_FEATURE: {"type": "VISUAL", "shape": list(v.image_shape)}, **inputs}
    else:
        inputs[ENV_FEATURE] = {"type": "ENV", "shape": [config.obs_dim - state_dim]}
    return {
        "type": LEROBOT_TYPE,
        "n_obs_steps": config.n_obs_steps,
        "normalization_mapping": {
            "VISUAL": "MEAN_STD",
            "STATE": "MIN_MAX",
            "ACTION": "MIN_MAX",
            "ENV": "MIN_MAX",
        },
        "input_features": inputs,
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
        "noise_scheduler_type": kinds[sp.kind],
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


# ------------------------------------------------------------------------------------------------
# weight names


def lerobot_to_ours(name: str, image: bool, separate_encoder: bool) -> str | None:
    """Our network key for a LeRobot ``model.safetensors`` key (None: not a network weight)."""
    if name.startswith("diffusion.unet."):
        key = name[len("diffusion.unet.") :]
        key = key.replace(".conv1.", ".blocks.0.").replace(".conv2.", ".blocks.1.")
        parts = key.split(".")
        if parts[0] in ("down_modules", "up_modules") and parts[2] == "2":
            key = ".".join([*parts[:3], "conv", *parts[3:]])
        return f"unet.{key}" if image else key
    prefix = "diffusion.rgb_encoder.0." if separate_encoder else "diffusion.rgb_encoder."
    if image and name.startswith(prefix):
        return "rgb_encoder." + name[len(prefix) :]
    return None


def ours_to_lerobot(key: str, image: bool) -> str:
    """The LeRobot name of our network key (inverse of `lerobot_to_ours`, shared encoder)."""
    if image and key.startswith("rgb_encoder."):
        return "diffusion." + key
    if image:
        key = key[len("unet.") :]
    key = key.replace(".blocks.0.", ".conv1.").replace(".blocks.1.", ".conv2.")
    parts = key.split(".")
    if parts[0] in ("down_modules", "up_modules") and parts[2] == "2" and parts[3] == "conv":
        parts = [*parts[:3], *parts[4:]]
    return "diffusion.unet." + ".".join(parts)


def _film_permutation(config: PolicyConfig, state_dim: int, to_ours: bool) -> torch.Tensor | None:
    """Column order turning LeRobot's per-step [state, env] FiLM inputs into ours [env, state] (or back).

    Returns None for image policies (same order on both sides).
    """
    if config.obs_type != "state":
        return None
    dsed, Do, To = config.unet.diffusion_step_embed_dim, config.obs_dim, config.n_obs_steps
    step = torch.cat((torch.arange(state_dim, Do), torch.arange(state_dim)))  # ours[j] = theirs[step[j]]
    if not to_ours:
        step = torch.argsort(step)  # theirs[j] = ours[inv[j]]
    cols = [torch.arange(dsed)] + [dsed + t * Do + step for t in range(To)]
    return torch.cat(cols)


def _permute_film(weights: dict[str, torch.Tensor], perm: torch.Tensor | None) -> dict[str, torch.Tensor]:
    if perm is None:
        return weights
    return {
        k: (v[:, perm].contiguous() if k.endswith("cond_encoder.1.weight") else v) for k, v in weights.items()
    }


# ------------------------------------------------------------------------------------------------
# statistics


def _stat(root: Path, stats: Mapping[str, torch.Tensor], feature: str, name: str, dim: int) -> np.ndarray:
    key = f"{feature}.{name}"
    if key not in stats:
        raise _refuse(root, f"normalisation statistic {key!r} is missing")
    value = stats[key].detach().to(torch.float32).reshape(-1).numpy()
    if value.shape != (dim,):
        raise _refuse(root, f"normalisation statistic {key!r} has {value.size} values, expected {dim}")
    if not np.isfinite(value).all():
        raise _refuse(root, f"normalisation statistic {key!r} is not finite (unfitted?)")
    return value


def _affine(
    root: Path, stats: Mapping[str, torch.Tensor], feature: str, mode: str, dim: int, legacy: bool
) -> dict[str, np.ndarray]:
    """`MinMaxNormalizer` statistics (float64) of one LeRobot feature: normalize(x) = x * scale + offset
    as LeRobot's mode computes it (the same float64 arithmetic as `MinMaxNormalizer.fit` for MIN_MAX);
    min / max are the statistics for MIN_MAX, else the preimage of [-1, 1]."""
    if mode == "MIN_MAX":
        lo = _stat(root, stats, feature, "min", dim).astype(np.float64)
        hi = _stat(root, stats, feature, "max", dim).astype(np.float64)
        span = hi - lo
        span = span + LEROBOT_EPS if legacy else np.where(span == 0, LEROBOT_EPS, span)
        scale = 2.0 / span
        return {"min": lo, "max": hi, "scale": scale, "offset": -1.0 - scale * lo}
    if mode == "MEAN_STD":
        mean = _stat(root, stats, feature, "mean", dim).astype(np.float64)
        std = _stat(root, stats, feature, "std", dim).astype(np.float64)
        scale = 1.0 / (std + LEROBOT_EPS)
        offset = -mean * scale
    elif mode == "IDENTITY":
        scale, offset = np.ones(dim), np.zeros(dim)
    else:
        raise _refuse(root, f"normalisation mode {mode!r} of {feature!r} is not supported {_NORM_MODES}")
    return {"min": (-1.0 - offset) / scale, "max": (1.0 - offset) / scale, "scale": scale, "offset": offset}


def _image_stats(
    root: Path, stats: Mapping[str, torch.Tensor], feature: str, mode: str, channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) with (x - mean) / std equal, in float32, to LeRobot's image normalisation."""
    if mode == "MEAN_STD":
        mean = _stat(root, stats, feature, "mean", channels)
        std = _stat(root, stats, feature, "std", channels) + np.float32(LEROBOT_EPS)  # float32, as LeRobot
    elif mode == "IDENTITY":
        mean, std = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    elif mode == "MIN_MAX":
        lo, hi = (_stat(root, stats, feature, n, channels).astype(np.float64) for n in ("min", "max"))
        mean, std = (hi + lo) / 2, (hi - lo) / 2
    else:
        raise _refuse(root, f"normalisation mode {mode!r} of {feature!r} is not supported {_NORM_MODES}")
    if not (std > 0).all():
        raise _refuse(root, f"image statistics of {feature!r} give a non-positive scale")
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _normalizer_state(key: str, parts: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """`MinMaxNormalizer` buffers ``stats.<key>.*`` from feature statistics concatenated in order."""
    out = {}
    for name in ("min", "max", "scale", "offset"):
        out[f"stats.{key}.{name}"] = torch.from_numpy(np.concatenate([p[name] for p in parts])).to(
            torch.float32
        )
    out[f"stats.{key}.fitted"] = torch.tensor(True)
    return out


def _read_processor(
    root: Path, filename: str, step_name: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config and tensors of the (un)normaliser step of a 0.4+ processor JSON; other steps must be
    passive (rename, batch, device) or the directory is refused."""
    path = root / filename
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _refuse(root, f"{filename} is not readable JSON: {exc}") from exc
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, list):
        raise _refuse(root, f"{filename} has no 'steps' list")
    found = None
    for step in steps:
        name = step.get("registry_name") if isinstance(step, dict) else None
        if name == step_name:
            if found is not None:
                raise _refuse(root, f"{filename} has two {step_name} steps")
            found = step
        elif name not in _PASSIVE_STEPS:
            what = name or (step.get("class") if isinstance(step, dict) else step)
            raise _refuse(root, f"{filename} has a processor step {what!r} this project cannot reproduce")
    if found is None or "state_file" not in found:
        raise _refuse(root, f"{filename} has no {step_name} step with a state_file")
    state_file = Path(str(found["state_file"]))
    if state_file.name != str(found["state_file"]):
        raise _refuse(
            root, f"{filename}: state_file {found['state_file']!r} must be a file name in the directory"
        )
    return dict(found.get("config") or {}), read_tensors(root / state_file)


def _stats_and_modes(
    root: Path, cfg: Mapping[str, Any], model: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, str], bool, set[str] | None]:
    """(input stats, output stats, feature type -> mode, legacy, normalised observation keys or None
    for all) from either layout; removes the 0.3.x normaliser buffers from ``model``."""
    legacy_keys = [
        k
        for k in model
        if k.split(".")[0] in ("normalize_inputs", "normalize_targets", "unnormalize_outputs")
    ]
    has_processors = (root / PREPROCESSOR_FILE).exists() or (root / POSTPROCESSOR_FILE).exists()
    modes = dict(cfg.get("normalization_mapping") or {})
    if legacy_keys and has_processors:
        raise _refuse(root, "has both 0.3.x normaliser buffers in model.safetensors and 0.4+ processor files")
    if legacy_keys:

        def unpack(prefix: str) -> dict[str, torch.Tensor]:
            out = {}
            for k in legacy_keys:
                if k.startswith(prefix + ".buffer_"):
                    feature, stat = k[len(prefix) + len(".buffer_") :].rsplit(".", 1)
                    out[f"{feature}.{stat}"] = model[k]
            return out

        inputs = {**unpack("normalize_inputs"), **unpack("normalize_targets")}
        outputs = unpack("unnormalize_outputs")
        for k in legacy_keys:
            del model[k]
        return inputs, outputs, modes, True, None
    if not has_processors:
        raise _refuse(
            root,
            f"has no normalisation statistics: neither normalize_* buffers in {MODEL_FILE} (0.3.x) nor "
            f"{PREPROCESSOR_FILE} / {POSTPROCESSOR_FILE} (0.4+)",
        )
    pre_cfg, inputs = _read_processor(root, PREPROCESSOR_FILE, "normalizer_processor")
    post_cfg, outputs = _read_processor(root, POSTPROCESSOR_FILE, "unnormalizer_processor")
    for step_cfg in (pre_cfg, post_cfg):
        if step_cfg.get("norm_map"):
            modes.update(step_cfg["norm_map"])
        if float(step_cfg.get("eps", LEROBOT_EPS)) != LEROBOT_EPS:
            raise _refuse(root, f"normaliser eps {step_cfg['eps']} is not supported (only {LEROBOT_EPS})")
    only = pre_cfg.get("normalize_observation_keys")  # 0.6: observations outside it pass unnormalised
    return inputs, outputs, modes, False, (set(only) if only is not None else None)


def _legacy_name(feature: str) -> str:
    return feature.replace(".", "_")


# ------------------------------------------------------------------------------------------------
# load


def load_lerobot_policy(path: str | Path) -> DiffusionPolicy:
    """Build a `DiffusionPolicy` from a LeRobot diffusion directory (0.3.x or 0.4+ layout), strictly.

    Raises:
        CheckpointError: naming what is missing, unexpected, misshaped, or not representable here.
    """
    root = Path(path)
    try:
        cfg = json.loads((root / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _refuse(root, f"config.json is not readable JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise _refuse(root, "config.json is not a JSON object")
    layout = LeRobotLayout(root, cfg) if cfg.get("type") == LEROBOT_TYPE else None
    if layout is None:
        raise _refuse(root, f"policy type {cfg.get('type')!r} is not supported; only {LEROBOT_TYPE!r}")
    config = policy_config_from_lerobot(root, cfg, layout)
    model = read_tensors(root / MODEL_FILE)
    inputs, outputs, modes, legacy, only = _stats_and_modes(root, cfg, model)
    if legacy:  # 0.3.x names buffers by the feature name with dots replaced
        inputs = {_restore(k, layout): v for k, v in inputs.items()}
        outputs = {_restore(k, layout): v for k, v in outputs.items()}
    image = layout.image is not None

    weights: dict[str, torch.Tensor] = {}
    unexpected = []
    for name, tensor in model.items():
        ours = lerobot_to_ours(name, image, layout.separate_encoder)
        if ours is None:
            unexpected.append(name)
        else:
            weights[ours] = tensor
    if unexpected:
        raise _refuse(root, f"{MODEL_FILE} has tensors this policy does not use: {sorted(unexpected)[:8]}")
    state_dim = layout.state[1]
    weights = _permute_film(weights, _film_permutation(config, state_dim, to_ours=True))

    def mode_of(feature: str, kind: str) -> str:
        if only is not None and kind != "ACTION" and feature not in only:
            return "IDENTITY"
        return str(modes.get(kind, "IDENTITY"))

    name, dim = layout.state
    obs_parts = [_affine(root, inputs, name, mode_of(name, "STATE"), dim, legacy)]
    if layout.env is not None:  # our observation: [env, state]
        name, dim = layout.env
        obs_parts.insert(0, _affine(root, inputs, name, mode_of(name, "ENV"), dim, legacy))
    name, dim = layout.action
    act = _affine(root, outputs, name, mode_of(name, "ACTION"), dim, legacy)
    if image:
        name, shape = layout.image
        mean, std = _image_stats(root, inputs, name, mode_of(name, "VISUAL"), shape[0])
        config.vision.image_mean, config.vision.image_std = mean, std

    policy = DiffusionPolicy(config)
    check_state_dict(policy.network.state_dict(), weights, f"{root / MODEL_FILE} (LeRobot names mapped)")
    policy.network.load_state_dict(weights, strict=True)
    stats = {**_normalizer_state(OBS_KEY, obs_parts), **_normalizer_state("action", [act])}
    try:
        policy.normalizer.load_state_dict(stats, strict=True)
    except ValueError as exc:
        raise _refuse(root, f"normalisation statistics are unusable: {exc}") from exc
    return policy.eval()


def _restore(flat_key: str, layout: LeRobotLayout) -> str:
    """``observation_state.min`` -> ``observation.state.min`` for the features of ``layout``."""
    feature, stat = flat_key.rsplit(".", 1)
    names = [layout.state[0], layout.action[0]]
    names += [layout.env[0]] if layout.env else []
    names += [layout.image[0]] if layout.image else []
    for name in names:
        if _legacy_name(name) == feature:
            return f"{name}.{stat}"
    return flat_key


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
    weights = _permute_film(weights, _film_permutation(config, state_dim, to_ours=False))
    return cfg, {ours_to_lerobot(k, image): v.contiguous() for k, v in weights.items()}


def lerobot_stats(
    policy: DiffusionPolicy, state_dim: int = 2
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(preprocessor stats, postprocessor stats) of ``policy``, keyed ``<feature>.<stat>``.

    Raises:
        ValueError: if a dimension is constant (range below the normaliser's eps): LeRobot would scale it
            where this project centres it, so the policies would differ.
    """
    config, norm = policy.config, policy.normalizer
    obs, act = norm.get_stats(OBS_KEY), norm.get_stats("action")
    for key, st in ((OBS_KEY, obs), ("action", act)):
        flat = (st["max"] - st["min"]) < DEFAULT_RANGE_EPS
        if bool(flat.any()):
            raise ValueError(
                f"normaliser key {key!r} has constant dimension(s) {flat.nonzero().flatten().tolist()}: "
                "LeRobot's MIN_MAX would scale them by 2 / (max - min) where this project centres them"
            )
    pre: dict[str, torch.Tensor] = {}
    if config.obs_type == "pixels_agent_pos":
        v = config.vision
        pre[f"{IMAGE_FEATURE}.mean"] = torch.tensor(v.image_mean, dtype=torch.float32).view(-1, 1, 1)
        pre[f"{IMAGE_FEATURE}.std"] = torch.tensor(v.image_std, dtype=torch.float32).view(-1, 1, 1)
        pre[f"{STATE_FEATURE}.min"], pre[f"{STATE_FEATURE}.max"] = obs["min"], obs["max"]
    else:
        De = config.obs_dim - state_dim
        pre[f"{ENV_FEATURE}.min"], pre[f"{ENV_FEATURE}.max"] = obs["min"][:De], obs["max"][:De]
        pre[f"{STATE_FEATURE}.min"], pre[f"{STATE_FEATURE}.max"] = obs["min"][De:], obs["max"][De:]
    pre[f"{ACTION_FEATURE}.min"], pre[f"{ACTION_FEATURE}.max"] = act["min"], act["max"]
    post = {f"{ACTION_FEATURE}.min": act["min"], f"{ACTION_FEATURE}.max": act["max"]}
    return {k: v.contiguous() for k, v in pre.items()}, {k: v.contiguous() for k, v in post.items()}


def processor_configs(cfg: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The policy_preprocessor.json / policy_postprocessor.json of LeRobot 0.4+ for a config.json dict."""
    norm_map = cfg["normalization_mapping"]
    features = {**cfg["input_features"], **cfg["output_features"]}
    normalizer = {"eps": LEROBOT_EPS, "features": features, "norm_map": norm_map}
    pre = {
        "name": "policy_preprocessor",
        "steps": [
            {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
            {"registry_name": "to_batch_processor", "config": {}},
            {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}},
            {"registry_name": "normalizer_processor", "config": normalizer, "state_file": PRE_STATE_FILE},
        ],
    }
    post = {
        "name": "policy_postprocessor",
        "steps": [
            {
                "registry_name": "unnormalizer_processor",
                "config": {**normalizer, "features": dict(cfg["output_features"])},
                "state_file": POST_STATE_FILE,
            },
            {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}},
        ],
    }
    return pre, post


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
