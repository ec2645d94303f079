"""Diffusion Policy (real-stanford/diffusion_policy) low-dim checkpoints in: a ``.ckpt`` becomes a
`DiffusionPolicy`.

Supported: ``DiffusionUnetLowdimPolicy`` with the observation as global conditioning (the PushT
keypoint policy of the paper: ``train_diffusion_unet_lowdim_workspace.yaml``), a DDPM or DDIM scheduler.
The file is read as data (`diffusion_policy_payload`); the policy is built from the checkpoint's own
config, and its weights are checked strictly against it (every tensor used, none missing, equal
shapes). Names: ``model.*`` is the U-Net, whose module names this project's `ConditionalUnet1d` keeps;
``normalizer.params_dict.{obs,action}.{scale,offset}`` is the affine map ``x * scale + offset`` that
`MinMaxNormalizer` applies too (copied exactly, whatever mode fitted it), with ``input_stats.{min,max}``
as its range. The EMA weights are used when the run kept them. What the loader cannot represent is
refused, naming it: image policies, inpainting-conditioned or local-conditioned low-dim policies,
``pred_action_steps_only``, latency steps, other schedulers or variance types. No hydra imports.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from parapolicy.policy.config import NoiseScheduleConfig, PolicyConfig, SamplerConfig, UNetConfig
from parapolicy.policy.model.checkpoint import check_finite, check_state_dict
from parapolicy.policy.model.diffusion_policy_payload import (
    DiffusionPolicyPayload,
    is_diffusion_policy_checkpoint,
    read_payload,
    refuse,
)
from parapolicy.policy.model.policy import OBS_KEY, DiffusionPolicy
from parapolicy.policy.model.vision import build_network

__all__ = [
    "is_diffusion_policy_checkpoint",
    "load_diffusion_policy_checkpoint",
    "policy_config_from_diffusion_policy",
]

LOWDIM_POLICY = "diffusion_policy.policy.diffusion_unet_lowdim_policy.DiffusionUnetLowdimPolicy"
UNET = "diffusion_policy.model.diffusion.conditional_unet1d.ConditionalUnet1D"
SCHEDULERS = {
    "diffusers.schedulers.scheduling_ddpm.DDPMScheduler": "ddpm",
    "diffusers.schedulers.scheduling_ddim.DDIMScheduler": "ddim",
}
_UNUSED = ("_dummy_variable", "mask_generator._dummy_variable")  # ModuleAttrMixin's empty parameters
_NORMALIZER = "normalizer.params_dict."


def load_diffusion_policy_checkpoint(path: str | Path) -> DiffusionPolicy:
    """Build a `DiffusionPolicy` from a Diffusion Policy low-dim ``.ckpt``, strictly.

    Raises:
        CheckpointError: naming what is missing, unexpected, misshaped, or not representable here.
    """
    p = Path(path)
    payload = read_payload(p)
    config = policy_config_from_diffusion_policy(p, payload.cfg)
    weights, stats = _split_state(p, payload, config)
    source = f"{p} ({payload.weights})"
    with torch.device("meta"):  # names and shapes checked before anything is allocated
        expected = build_network(config).state_dict()
    check_state_dict(expected, weights, source)
    check_finite(weights, source)
    check_finite(stats, source)
    policy = DiffusionPolicy(config)
    policy.network.load_state_dict(weights, strict=True)
    try:
        policy.normalizer.load_state_dict(stats, strict=True)
    except ValueError as exc:
        raise refuse(p, f"normaliser statistics are unusable: {exc}") from exc
    return policy.eval()


def policy_config_from_diffusion_policy(path: Path, cfg: Mapping[str, Any]) -> PolicyConfig:
    """The `PolicyConfig` of a resolved Diffusion Policy training config; refuses what it cannot represent."""
    pol = _section(path, cfg, "policy")
    if pol.get("_target_") != LOWDIM_POLICY:
        raise refuse(path, f"policy {pol.get('_target_')!r} is not supported; only {LOWDIM_POLICY}")
    wanted = {"obs_as_global_cond": True, "obs_as_local_cond": False, "pred_action_steps_only": False}
    wanted["oa_step_convention"] = True  # the plan's first executed row is To - 1, as here
    for key, value in wanted.items():
        if bool(pol.get(key, False)) != value:
            raise refuse(path, f"policy.{key}={pol.get(key)!r} is not supported (only {value})")
    if int(cfg.get("n_latency_steps", 0) or 0) != 0:
        raise refuse(path, f"n_latency_steps={cfg['n_latency_steps']} is not supported (only 0)")
    model, sched = _section(path, pol, "model"), _section(path, pol, "noise_scheduler")
    if model.get("_target_") != UNET:
        raise refuse(path, f"policy.model {model.get('_target_')!r} is not supported; only {UNET}")
    if int(_get(path, model, "n_groups")) != 8:
        raise refuse(
            path, "model.n_groups must be 8: Diffusion Policy's final Conv1dBlock always has 8 groups"
        )
    kind = SCHEDULERS.get(sched.get("_target_"))
    if kind is None:
        raise refuse(
            path, f"noise_scheduler {sched.get('_target_')!r} is not supported ({sorted(SCHEDULERS)})"
        )
    if kind == "ddpm" and sched.get("variance_type", "fixed_small") != "fixed_small":
        raise refuse(path, f"variance_type {sched['variance_type']!r} is not supported (only 'fixed_small')")
    try:
        return _policy_config(path, pol, model, sched, kind)
    except (ValueError, TypeError) as exc:
        raise refuse(path, f"config cannot be represented: {exc}") from exc


def _policy_config(
    path: Path, pol: Mapping[str, Any], model: Mapping[str, Any], sched: Mapping[str, Any], kind: str
) -> PolicyConfig:
    g = lambda section, key: _get(path, section, key)  # noqa: E731
    obs_dim, action_dim, n_obs = int(g(pol, "obs_dim")), int(g(pol, "action_dim")), int(g(pol, "n_obs_steps"))
    if int(g(model, "input_dim")) != action_dim or int(g(model, "global_cond_dim")) != obs_dim * n_obs:
        raise ValueError(
            f"model.input_dim {model['input_dim']} / global_cond_dim {model['global_cond_dim']} do not match "
            f"action_dim {action_dim} / obs_dim x n_obs_steps {obs_dim * n_obs}"
        )
    T = int(g(sched, "num_train_timesteps"))
    return PolicyConfig(
        obs_dim=obs_dim,
        obs_type="state",
        action_dim=action_dim,
        horizon=int(g(pol, "horizon")),
        n_obs_steps=n_obs,
        n_action_steps=int(g(pol, "n_action_steps")),
        unet=UNetConfig(
            down_dims=tuple(int(d) for d in g(model, "down_dims")),
            diffusion_step_embed_dim=int(g(model, "diffusion_step_embed_dim")),
            kernel_size=int(g(model, "kernel_size")),
            n_groups=8,
            cond_predict_scale=bool(g(model, "cond_predict_scale")),
        ),
        schedule=NoiseScheduleConfig(
            num_train_timesteps=T,
            beta_schedule=str(g(sched, "beta_schedule")),
            beta_start=float(g(sched, "beta_start")),
            beta_end=float(g(sched, "beta_end")),
            prediction_type=str(sched.get("prediction_type", "epsilon")),
            clip_sample=bool(sched.get("clip_sample", True)),
            clip_sample_range=float(sched.get("clip_sample_range", 1.0)),
        ),
        sampler=SamplerConfig(
            kind=kind,
            num_inference_steps=int(pol.get("num_inference_steps") or T),
            timestep_spacing=str(sched.get("timestep_spacing", "leading")),  # diffusers 0.11: leading
            steps_offset=int(sched.get("steps_offset", 0)),
            set_alpha_to_one=bool(sched.get("set_alpha_to_one", True)),
        ),
    )


def _split_state(
    path: Path, payload: DiffusionPolicyPayload, config: PolicyConfig
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The U-Net's weights (``model.`` stripped) and our normaliser's buffers from the policy state dict."""
    weights, stats, unexpected = {}, {}, []
    for name, tensor in payload.state_dict.items():
        if name.startswith("model."):
            weights[name[len("model.") :]] = tensor
        elif not name.startswith(_NORMALIZER) and name not in _UNUSED:
            unexpected.append(name)
    if unexpected:
        raise refuse(
            path, f"its policy state dict has tensors this policy does not use: {sorted(unexpected)[:8]}"
        )
    for ours, theirs, dim in ((OBS_KEY, "obs", config.obs_dim), ("action", "action", config.action_dim)):
        for name, key in (
            ("scale", "scale"),
            ("offset", "offset"),
            ("min", "input_stats.min"),
            ("max", "input_stats.max"),
        ):
            tensor = payload.state_dict.get(f"{_NORMALIZER}{theirs}.{key}")
            if tensor is None or tuple(tensor.shape) != (dim,):
                found = "missing" if tensor is None else f"shape {tuple(tensor.shape)}"
                raise refuse(
                    path, f"normaliser tensor {_NORMALIZER}{theirs}.{key} must have shape ({dim},), {found}"
                )
            stats[f"stats.{ours}.{name}"] = tensor.to(torch.float32)
        stats[f"stats.{ours}.fitted"] = torch.tensor(True)
    return weights, stats


def _section(path: Path, cfg: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = cfg.get(key)
    if not isinstance(value, Mapping):
        raise refuse(path, f"its config has no '{key}' section")
    return value


def _get(path: Path, cfg: Mapping[str, Any], key: str) -> Any:
    if cfg.get(key) is None:
        raise refuse(path, f"its config has no value for '{key}'")
    value = cfg[key]
    if isinstance(value, str) and "${" in value:
        raise refuse(path, f"config value {key}={value!r} is an unresolved interpolation")
    return value
