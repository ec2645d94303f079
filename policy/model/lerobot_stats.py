"""LeRobot normalisation statistics: read from either layout (0.3.x buffers in model.safetensors, 0.4+
processor files) into `MinMaxNormalizer` buffers and image statistics exactly as LeRobot normalises,
and written as 0.4+ processor files. No hydra."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from parapolicy.policy.model.checkpoint import MODEL_FILE, read_tensors
from parapolicy.policy.model.lerobot_config import (
    ACTION_FEATURE,
    ENV_FEATURE,
    IMAGE_FEATURE,
    LEROBOT_EPS,
    POST_STATE_FILE,
    POSTPROCESSOR_FILE,
    PRE_STATE_FILE,
    PREPROCESSOR_FILE,
    STATE_FEATURE,
    LeRobotLayout,
    refuse,
)
from parapolicy.policy.model.policy import OBS_KEY, DiffusionPolicy

# processor steps that do not change the values this project computes
_PASSIVE_STEPS = {"rename_observations_processor", "to_batch_processor", "device_processor"}
_NORM_MODES = ("MIN_MAX", "MEAN_STD", "IDENTITY")


def _stat(root: Path, stats: Mapping[str, torch.Tensor], feature: str, name: str, dim: int) -> np.ndarray:
    key = f"{feature}.{name}"
    if key not in stats:
        raise refuse(root, f"normalisation statistic {key!r} is missing")
    value = stats[key].detach().to(torch.float32).reshape(-1).numpy()
    if value.shape != (dim,):
        raise refuse(root, f"normalisation statistic {key!r} has {value.size} values, expected {dim}")
    if not np.isfinite(value).all():
        raise refuse(root, f"normalisation statistic {key!r} is not finite (unfitted?)")
    return value


def affine_stats(
    root: Path, stats: Mapping[str, torch.Tensor], feature: str, mode: str, dim: int, legacy: bool
) -> dict[str, np.ndarray]:
    """`MinMaxNormalizer` statistics (float64) of one LeRobot feature: normalize(x) = x * scale + offset
    as LeRobot's mode computes it (the same float64 arithmetic as `MinMaxNormalizer.fit` for MIN_MAX);
    min / max are the statistics for MIN_MAX, the preimage of [-1, 1] for MEAN_STD and unbounded for
    IDENTITY (the observation range check skips a dimension without a finite range)."""
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
    elif mode == "IDENTITY":  # no statistics, so no range: min / max are -inf / +inf
        inf = np.full(dim, np.inf)
        return {"min": -inf, "max": inf, "scale": np.ones(dim), "offset": np.zeros(dim)}
    else:
        raise refuse(root, f"normalisation mode {mode!r} of {feature!r} is not supported {_NORM_MODES}")
    return {"min": (-1.0 - offset) / scale, "max": (1.0 - offset) / scale, "scale": scale, "offset": offset}


def image_stats(
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
        raise refuse(root, f"normalisation mode {mode!r} of {feature!r} is not supported {_NORM_MODES}")
    if not (std > 0).all():
        raise refuse(root, f"image statistics of {feature!r} give a non-positive scale")
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def normalizer_state(key: str, parts: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
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
        raise refuse(root, f"{filename} is not readable JSON: {exc}") from exc
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, list):
        raise refuse(root, f"{filename} has no 'steps' list")
    found = None
    for step in steps:
        name = step.get("registry_name") if isinstance(step, dict) else None
        if name == step_name:
            if found is not None:
                raise refuse(root, f"{filename} has two {step_name} steps")
            found = step
        elif name not in _PASSIVE_STEPS:
            what = name or (step.get("class") if isinstance(step, dict) else step)
            raise refuse(root, f"{filename} has a processor step {what!r} this project cannot reproduce")
    if found is None or "state_file" not in found:
        raise refuse(root, f"{filename} has no {step_name} step with a state_file")
    state_file = Path(str(found["state_file"]))
    if state_file.name != str(found["state_file"]):
        raise refuse(
            root, f"{filename}: state_file {found['state_file']!r} must be a file name in the directory"
        )
    return dict(found.get("config") or {}), read_tensors(root / state_file)


def stats_and_modes(
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
        raise refuse(root, "has both 0.3.x normaliser buffers in model.safetensors and 0.4+ processor files")
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
        raise refuse(
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
            raise refuse(root, f"normaliser eps {step_cfg['eps']} is not supported (only {LEROBOT_EPS})")
    only = pre_cfg.get("normalize_observation_keys")  # 0.6: observations outside it pass unnormalised
    return inputs, outputs, modes, False, (set(only) if only is not None else None)


def _legacy_name(feature: str) -> str:
    return feature.replace(".", "_")


def restore_legacy_name(flat_key: str, layout: LeRobotLayout) -> str:
    """``observation_state.min`` -> ``observation.state.min`` for the features of ``layout``."""
    feature, stat = flat_key.rsplit(".", 1)
    names = [layout.state[0], layout.action[0]]
    names += [layout.env[0]] if layout.env else []
    names += [layout.image[0]] if layout.image else []
    for name in names:
        if _legacy_name(name) == feature:
            return f"{name}.{stat}"
    return flat_key


def _min_max_of_transform(st: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The (min, max) whose MIN_MAX transform is the normaliser's own ``x·scale + offset``, per dimension.

    That is the stored min and max wherever they are the transform's fit (this project's rule outside
    constant dimensions), else the ends of the transform's [-1, 1] preimage: a constant dimension (which
    this project centres without scaling), an unbounded (IDENTITY) one, or a Diffusion Policy normaliser
    fitted in another mode (robomimic's max-abs scaling, ``gaussian``), whose scale and offset are not
    its stored limits.
    """
    scale, offset = st["scale"].double(), st["offset"].double()  # (D,)
    lo, hi = (-1 - offset) / scale, (1 - offset) / scale  # x·scale + offset = ∓1
    stored_lo, stored_hi = st["min"].double(), st["max"].double()
    tol = 1e-4 * (hi - lo).abs()
    fit = ((lo - stored_lo).abs() <= tol) & ((hi - stored_hi).abs() <= tol)
    return torch.where(fit, stored_lo, lo).float(), torch.where(fit, stored_hi, hi).float()


def lerobot_stats(
    policy: DiffusionPolicy, state_dim: int = 2
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(preprocessor stats, postprocessor stats) of ``policy``, keyed ``<feature>.<stat>``: MIN_MAX
    limits that give LeRobot the normaliser's own transform (`_min_max_of_transform`)."""
    config, norm = policy.config, policy.normalizer
    obs_lo, obs_hi = _min_max_of_transform(norm.get_stats(OBS_KEY))
    act_lo, act_hi = _min_max_of_transform(norm.get_stats("action"))
    pre: dict[str, torch.Tensor] = {}
    if config.obs_type == "pixels_agent_pos":
        v = config.vision
        pre[f"{IMAGE_FEATURE}.mean"] = torch.tensor(v.image_mean, dtype=torch.float32).view(-1, 1, 1)
        pre[f"{IMAGE_FEATURE}.std"] = torch.tensor(v.image_std, dtype=torch.float32).view(-1, 1, 1)
        pre[f"{STATE_FEATURE}.min"], pre[f"{STATE_FEATURE}.max"] = obs_lo, obs_hi
    else:
        De = config.obs_dim - state_dim
        pre[f"{ENV_FEATURE}.min"], pre[f"{ENV_FEATURE}.max"] = obs_lo[:De], obs_hi[:De]
        pre[f"{STATE_FEATURE}.min"], pre[f"{STATE_FEATURE}.max"] = obs_lo[De:], obs_hi[De:]
    pre[f"{ACTION_FEATURE}.min"], pre[f"{ACTION_FEATURE}.max"] = act_lo, act_hi
    post = {f"{ACTION_FEATURE}.min": act_lo, f"{ACTION_FEATURE}.max": act_hi}
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
