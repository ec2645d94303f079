"""Diffusion Policy (real-stanford/diffusion_policy) checkpoints in: a ``.ckpt`` becomes a `DiffusionPolicy`.

Supported, with the observation as the network's condition and a DDPM or DDIM scheduler:
``DiffusionUnetLowdimPolicy`` (the PushT keypoint policy of the paper,
``train_diffusion_unet_lowdim_workspace.yaml``), ``DiffusionUnetHybridImagePolicy`` with one camera
and one low-dim state (the PushT image policy, ``train_diffusion_unet_hybrid_workspace.yaml``; its
encoder mapping is `diffusion_policy_image`), ``DiffusionUnetImagePolicy`` with one camera and one
low-dim state (``train_diffusion_unet_image_workspace.yaml`` with ``task=pusht_image``; its own
ResNet-18 encoder, mapped by `diffusion_policy_multi_image`), and the transformer policies
``DiffusionTransformerLowdimPolicy`` and ``DiffusionTransformerHybridImagePolicy`` (its
``TransformerForDiffusion`` is `transformer.TransformerDenoiser`, same names; the attention masks it
saves must be the ones its config implies). The file is read as data (`diffusion_policy_payload`);
the policy is built from the checkpoint's own config, and its weights are checked strictly against it
(every tensor used, none missing, equal shapes). Names: ``model.*`` is the network, whose module
names this project's `ConditionalUnet1d` and `TransformerDenoiser` keep;
``normalizer.params_dict.<key>.{scale,offset}`` is the affine map ``x * scale + offset`` that
`MinMaxNormalizer` applies too (copied exactly, whatever mode fitted it), with ``input_stats.{min,max}``
as its range. The EMA weights are used when the run kept them. What the loader cannot represent is
refused, naming it: other policy classes, inpainting-conditioned or local-conditioned policies,
``pred_action_steps_only``, latency steps, other schedulers or variance types, several cameras. No
hydra imports.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from parapolicy.policy.config import (
    NoiseScheduleConfig,
    PolicyConfig,
    SamplerConfig,
    TransformerConfig,
    UNetConfig,
)
from parapolicy.policy.model.checkpoint import check_finite, check_state_dict
from parapolicy.policy.model.diffusion_policy_image import (
    HYBRID_POLICY,
    HYBRID_TRANSFORMER_POLICY,
    image_layout,
    image_policy_weights,
    vision_config,
)
from parapolicy.policy.model.diffusion_policy_multi_image import (
    IMAGE_POLICY,
    encoder_prefix,
    multi_image_layout,
    multi_image_vision_config,
    multi_image_weights,
)
from parapolicy.policy.model.diffusion_policy_payload import (
    DiffusionPolicyPayload,
    is_diffusion_policy_checkpoint,
    read_payload,
    refuse,
)
from parapolicy.policy.model.policy import OBS_KEY, DiffusionPolicy
from parapolicy.policy.model.transformer import causal_masks
from parapolicy.policy.model.vision import build_network

__all__ = [
    "is_diffusion_policy_checkpoint",
    "load_diffusion_policy_checkpoint",
    "policy_config_from_diffusion_policy",
]

LOWDIM_POLICY = "diffusion_policy.policy.diffusion_unet_lowdim_policy.DiffusionUnetLowdimPolicy"
TRANSFORMER_POLICY = (
    "diffusion_policy.policy.diffusion_transformer_lowdim_policy.DiffusionTransformerLowdimPolicy"
)
UNET = "diffusion_policy.model.diffusion.conditional_unet1d.ConditionalUnet1D"
TRANSFORMER = "diffusion_policy.model.diffusion.transformer_for_diffusion.TransformerForDiffusion"
# policy class -> (flags its config must have, the model section's class; None: the network's settings
# sit in the policy section itself, as in the image policies)
_POLICIES: dict[str, tuple[dict[str, bool], str | None]] = {
    LOWDIM_POLICY: (
        {
            "obs_as_global_cond": True,
            "obs_as_local_cond": False,
            "pred_action_steps_only": False,
            "oa_step_convention": True,  # the plan's first executed row is To - 1, as here
        },
        UNET,
    ),
    HYBRID_POLICY: ({"obs_as_global_cond": True}, None),
    IMAGE_POLICY: ({"obs_as_global_cond": True}, None),
    TRANSFORMER_POLICY: ({"obs_as_cond": True, "pred_action_steps_only": False}, TRANSFORMER),
    HYBRID_TRANSFORMER_POLICY: ({"obs_as_cond": True, "pred_action_steps_only": False}, None),
}
_TRANSFORMERS = (TRANSFORMER_POLICY, HYBRID_TRANSFORMER_POLICY)
SCHEDULERS = {
    "diffusers.schedulers.scheduling_ddpm.DDPMScheduler": "ddpm",
    "diffusers.schedulers.scheduling_ddim.DDIMScheduler": "ddim",
}
# ModuleAttrMixin's empty parameters (the transformer network is one too)
_UNUSED = (
    "_dummy_variable",
    "mask_generator._dummy_variable",
    "model._dummy_variable",
    "obs_encoder._dummy_variable",
)
_NORMALIZER = "normalizer.params_dict."


def load_diffusion_policy_checkpoint(path: str | Path) -> DiffusionPolicy:
    """Build a `DiffusionPolicy` from a Diffusion Policy ``.ckpt`` (see the module doc), strictly.

    Raises:
        CheckpointError: naming what is missing, unexpected, misshaped, or not representable here.
    """
    p = Path(path)
    payload = read_payload(p)
    config = policy_config_from_diffusion_policy(p, payload.cfg, payload.state_dict)
    with torch.device("meta"):  # names and shapes checked before anything is allocated
        skeleton = build_network(config)
    weights, stats = _split_state(p, payload, config, skeleton)
    source = f"{p} ({payload.weights})"
    check_state_dict(skeleton.state_dict(), weights, source)
    check_finite(weights, source)
    check_finite(stats, source)
    policy = DiffusionPolicy(config)
    policy.network.load_state_dict(weights, strict=True)
    try:
        policy.normalizer.load_state_dict(stats, strict=True)
    except ValueError as exc:
        raise refuse(p, f"normaliser statistics are unusable: {exc}") from exc
    return policy.eval()


def policy_config_from_diffusion_policy(
    path: Path, cfg: Mapping[str, Any], state: Mapping[str, torch.Tensor]
) -> PolicyConfig:
    """The `PolicyConfig` of a resolved Diffusion Policy training config (and, for an image policy, the
    image statistics and keypoint count its state dict holds); refuses what it cannot represent."""
    pol = _section(path, cfg, "policy")
    target = pol.get("_target_")
    if target not in _POLICIES:
        raise refuse(path, f"policy {target!r} is not supported; only {sorted(_POLICIES)}")
    wanted, model_target = _POLICIES[target]
    for key, value in wanted.items():
        if bool(pol.get(key, False)) != value:
            raise refuse(path, f"policy.{key}={pol.get(key)!r} is not supported (only {value})")
    if int(cfg.get("n_latency_steps", 0) or 0) != 0:
        raise refuse(path, f"n_latency_steps={cfg['n_latency_steps']} is not supported (only 0)")
    sched = _section(path, pol, "noise_scheduler")
    model = pol  # the image policies keep the network's settings in their own section
    if model_target is not None:
        model = _section(path, pol, "model")
        if model.get("_target_") != model_target:
            raise refuse(
                path, f"policy.model {model.get('_target_')!r} is not supported; only {model_target}"
            )
    if target not in _TRANSFORMERS and int(_get(path, model, "n_groups")) != 8:
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
        if target == LOWDIM_POLICY:
            return _lowdim_config(path, pol, model, sched, kind)
        if target == TRANSFORMER_POLICY:
            return _transformer_config(path, pol, model, sched, kind)
        return _image_config(path, pol, sched, kind, state, target)
    except (ValueError, TypeError) as exc:
        raise refuse(path, f"config cannot be represented: {exc}") from exc


def _lowdim_config(
    path: Path, pol: Mapping[str, Any], model: Mapping[str, Any], sched: Mapping[str, Any], kind: str
) -> PolicyConfig:
    g = lambda section, key: _get(path, section, key)  # noqa: E731
    obs_dim, action_dim, n_obs = int(g(pol, "obs_dim")), int(g(pol, "action_dim")), int(g(pol, "n_obs_steps"))
    if int(g(model, "input_dim")) != action_dim or int(g(model, "global_cond_dim")) != obs_dim * n_obs:
        raise ValueError(
            f"model.input_dim {model['input_dim']} / global_cond_dim {model['global_cond_dim']} do not match "
            f"action_dim {action_dim} / obs_dim x n_obs_steps {obs_dim * n_obs}"
        )
    return PolicyConfig(
        obs_dim=obs_dim,
        obs_type="state",
        action_dim=action_dim,
        unet=_unet_config(path, model),
        **_common(path, pol, sched, kind),
    )


def _transformer_config(
    path: Path, pol: Mapping[str, Any], model: Mapping[str, Any], sched: Mapping[str, Any], kind: str
) -> PolicyConfig:
    g = lambda section, key: _get(path, section, key)  # noqa: E731
    obs_dim, action_dim = int(g(pol, "obs_dim")), int(g(pol, "action_dim"))
    if not bool(model.get("obs_as_cond", False)):
        raise ValueError("model.obs_as_cond must be True (observation inpainting is not built)")
    shapes = {
        "input_dim": action_dim,
        "output_dim": action_dim,
        "cond_dim": obs_dim,
        "horizon": int(g(pol, "horizon")),
        "n_obs_steps": int(g(pol, "n_obs_steps")),
    }
    for key, value in shapes.items():
        if int(g(model, key)) != value:
            raise ValueError(f"model.{key}={model[key]} does not match the policy's {value}")
    return PolicyConfig(
        obs_dim=obs_dim,
        obs_type="state",
        action_dim=action_dim,
        network="transformer",
        transformer=_transformer_sizes(path, model),
        **_common(path, pol, sched, kind),
    )


def _image_config(
    path: Path,
    pol: Mapping[str, Any],
    sched: Mapping[str, Any],
    kind: str,
    state: Mapping[str, torch.Tensor],
    target: str,
) -> PolicyConfig:
    """An image policy's config: robomimic's encoder (the hybrid policies) or Diffusion Policy's own
    (``DiffusionUnetImagePolicy``)."""
    own_encoder = target == IMAGE_POLICY
    layout = multi_image_layout(path, pol) if own_encoder else image_layout(path, pol)
    action = _section(path, _section(path, pol, "shape_meta"), "action")
    action_shape = [int(d) for d in _get(path, action, "shape")]
    if len(action_shape) != 1:
        raise ValueError(f"action shape {action_shape} must be (Da,)")
    network = (
        {"network": "transformer", "transformer": _transformer_sizes(path, pol)}
        if target == HYBRID_TRANSFORMER_POLICY
        else {"unet": _unet_config(path, pol)}
    )
    vision = (multi_image_vision_config if own_encoder else vision_config)(path, pol, layout, state)
    return PolicyConfig(
        obs_dim=layout.state_dim,
        obs_type="pixels_agent_pos",
        action_dim=action_shape[0],
        vision=vision,
        **network,
        **_common(path, pol, sched, kind),
    )


def _transformer_sizes(path: Path, section: Mapping[str, Any]) -> TransformerConfig:
    """The `TransformerConfig` of a ``TransformerForDiffusion`` configured by ``section``."""
    g = lambda key: _get(path, section, key)  # noqa: E731
    if not bool(section.get("time_as_cond", True)):
        raise ValueError("time_as_cond must be True (the encoder-only variant is not built)")
    return TransformerConfig(
        n_layer=int(g("n_layer")),
        n_head=int(g("n_head")),
        n_emb=int(g("n_emb")),
        p_drop_emb=float(section.get("p_drop_emb", 0.1)),  # dropout: training only
        p_drop_attn=float(section.get("p_drop_attn", 0.1)),
        causal_attn=bool(g("causal_attn")),
        n_cond_layers=int(section.get("n_cond_layers", 0)),
    )


def _unet_config(path: Path, model: Mapping[str, Any]) -> UNetConfig:
    g = lambda key: _get(path, model, key)  # noqa: E731
    return UNetConfig(
        down_dims=tuple(int(d) for d in g("down_dims")),
        diffusion_step_embed_dim=int(g("diffusion_step_embed_dim")),
        kernel_size=int(g("kernel_size")),
        n_groups=8,
        cond_predict_scale=bool(g("cond_predict_scale")),
    )


def _common(path: Path, pol: Mapping[str, Any], sched: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The `PolicyConfig` fields every policy class shares: horizon, steps, schedule, sampler."""
    g = lambda section, key: _get(path, section, key)  # noqa: E731
    T = int(g(sched, "num_train_timesteps"))
    return {
        "horizon": int(g(pol, "horizon")),
        "n_obs_steps": int(g(pol, "n_obs_steps")),
        "n_action_steps": int(g(pol, "n_action_steps")),
        "schedule": NoiseScheduleConfig(
            num_train_timesteps=T,
            beta_schedule=str(g(sched, "beta_schedule")),
            beta_start=float(g(sched, "beta_start")),
            beta_end=float(g(sched, "beta_end")),
            prediction_type=str(sched.get("prediction_type", "epsilon")),
            clip_sample=bool(sched.get("clip_sample", True)),
            clip_sample_range=float(sched.get("clip_sample_range", 1.0)),
        ),
        "sampler": SamplerConfig(
            kind=kind,
            num_inference_steps=int(pol.get("num_inference_steps") or T),
            timestep_spacing=str(sched.get("timestep_spacing", "leading")),  # diffusers 0.11: leading
            steps_offset=int(sched.get("steps_offset", 0)),
            set_alpha_to_one=bool(sched.get("set_alpha_to_one", True)),
        ),
    }


def _split_state(
    path: Path, payload: DiffusionPolicyPayload, config: PolicyConfig, skeleton: torch.nn.Module
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Our network's weights and our normaliser's buffers from the policy state dict (``skeleton``:
    our network on the meta device, for the image encoder's feature-map shape)."""
    state = payload.state_dict
    network = {
        name[len("model.") :]: t
        for name, t in state.items()
        if name.startswith("model.") and name not in _UNUSED
    }
    used = {name for name in state if name.startswith(("model.", _NORMALIZER)) or name in _UNUSED}
    keys = {OBS_KEY: "obs"}  # our normaliser key -> theirs
    if config.network == "transformer":
        network = _without_masks(path, network, config)
    if config.obs_type == "state":
        weights = network
    else:
        pol = payload.cfg["policy"]
        if pol.get("_target_") == IMAGE_POLICY:  # Diffusion Policy's own encoder
            layout = multi_image_layout(path, pol)
            prefix = encoder_prefix(path, pol, layout)
            weights, consumed = multi_image_weights(path, prefix, layout, state, config, network)
        else:  # robomimic's encoder (the hybrid policies)
            layout = image_layout(path, pol)
            _, h, w = skeleton.rgb_encoder.feature_shape
            weights, consumed = image_policy_weights(path, layout, state, config, network, (h, w))
        used |= consumed
        keys = {OBS_KEY: layout.state}
    unexpected = sorted(set(state) - used)
    if unexpected:
        raise refuse(path, f"its policy state dict has tensors this policy does not use: {unexpected[:8]}")
    stats = {}
    dims = {OBS_KEY: config.obs_dim, "action": config.action_dim}
    for ours, theirs in (*keys.items(), ("action", "action")):
        for name, key in (
            ("scale", "scale"),
            ("offset", "offset"),
            ("min", "input_stats.min"),
            ("max", "input_stats.max"),
        ):
            tensor = state.get(f"{_NORMALIZER}{theirs}.{key}")
            if tensor is None or tuple(tensor.shape) != (dims[ours],):
                found = "missing" if tensor is None else f"shape {tuple(tensor.shape)}"
                what = f"normaliser tensor {_NORMALIZER}{theirs}.{key}"
                raise refuse(path, f"{what} must have shape ({dims[ours]},), {found}")
            stats[f"stats.{ours}.{name}"] = tensor.to(torch.float32)
        stats[f"stats.{ours}.fitted"] = torch.tensor(True)
    return weights, stats


def _without_masks(
    path: Path, weights: dict[str, torch.Tensor], config: PolicyConfig
) -> dict[str, torch.Tensor]:
    """The transformer's weights without its attention masks, which must be the ones its config implies
    (`transformer.causal_masks`; none without causal attention)."""
    weights = dict(weights)
    ours = causal_masks(config.horizon, 1 + config.n_obs_steps) if config.transformer.causal_attn else None
    for i, name in enumerate(("mask", "memory_mask")):
        theirs = weights.pop(name, None)
        if ours is None and theirs is not None:
            raise refuse(path, f"model.{name} is set but model.causal_attn is False")
        if ours is not None and (theirs is None or not torch.equal(theirs, ours[i])):
            found = "missing" if theirs is None else "different"
            raise refuse(path, f"model.{name} is {found}: the causal mask of the config is expected")
    return weights


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
