"""Diffusion Policy's ``DiffusionUnetImagePolicy`` in: its own observation encoder
(``MultiImageObsEncoder``) mapped onto this project's `RgbEncoder` with ``pool="avg"``.

The encoder runs a torchvision ResNet-18 whose ``fc`` is the identity (``model_getter.get_resnet``), so
each image gives the average-pooled 512 channels of the last stage, the architecture of `RgbEncoder`
with ``pool="avg"``; its tensors (``obs_encoder.key_model_map.<camera>.conv1.weight``, ...; ``rgb``
instead of the camera with ``share_rgb_model``) keep torchvision's names, which `vision.trunk_name` maps.
What its config does, and what it becomes here:

- ``use_group_norm``: every BatchNorm becomes GroupNorm(C // 16, C), as ``norm="group_norm"`` here.
- ``crop_shape`` with ``random_crop: True``: a random crop in training and torchvision's centre crop in
  evaluation, as here. With ``random_crop: False`` the encoder crops nothing: it assigns its centre
  crop to the wrong variable (the normaliser's), which is then overwritten. The loaded policy does not
  crop either.
- ``imagenet_norm``: ImageNet's per-channel mean and std, applied after the policy's own normaliser
  (``x * scale + offset``, ``[0, 1] -> [-1, 1]`` for PushT). Both affine maps fold into this project's
  image mean and std: ``((x * a + b) - m) / s = (x - (m - b) / a) / (s / a)``.
- Features: every camera's before the low-dim keys, whatever the order of ``shape_meta``, so each step
  is [image, state] and the U-Net's condition columns are reordered to this project's [state, image]
  (`diffusion_policy_image.reorder_condition`).

Refused, naming the reason: another backbone or R3M weights, ``resize_shape`` (resizing is not
implemented), and what `diffusion_policy_image.image_layout` refuses (several cameras, ...). No hydra
imports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from parapolicy.policy.config import PolicyConfig, VisionConfig
from parapolicy.policy.model.diffusion_policy_image import (
    ImageLayout,
    image_affine,
    image_layout,
    reorder_condition,
)
from parapolicy.policy.model.diffusion_policy_payload import refuse
from parapolicy.policy.model.vision import trunk_name

__all__ = [
    "IMAGE_POLICY",
    "encoder_prefix",
    "multi_image_layout",
    "multi_image_vision_config",
    "multi_image_weights",
]

IMAGE_POLICY = "diffusion_policy.policy.diffusion_unet_image_policy.DiffusionUnetImagePolicy"
_ENCODER = "diffusion_policy.model.vision.multi_image_obs_encoder.MultiImageObsEncoder"
_GET_RESNET = "diffusion_policy.model.vision.model_getter.get_resnet"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def multi_image_layout(path: Path, pol: Mapping[str, Any]) -> ImageLayout:
    """The observation layout (one camera, one low-dim state); the image's features always come first."""
    return replace(image_layout(path, pol), image_first=True)


def _encoder(path: Path, pol: Mapping[str, Any]) -> Mapping[str, Any]:
    enc = pol.get("obs_encoder")
    if not isinstance(enc, Mapping) or enc.get("_target_") != _ENCODER:
        found = enc.get("_target_") if isinstance(enc, Mapping) else enc
        raise refuse(path, f"policy.obs_encoder {found!r} is not supported; only {_ENCODER}")
    return enc


def encoder_prefix(path: Path, pol: Mapping[str, Any], layout: ImageLayout) -> str:
    """The prefix of the camera's ResNet tensors in the policy state dict."""
    key = "rgb" if bool(_encoder(path, pol).get("share_rgb_model", False)) else layout.image
    return f"obs_encoder.key_model_map.{key}."


def multi_image_vision_config(
    path: Path, pol: Mapping[str, Any], layout: ImageLayout, state: Mapping[str, torch.Tensor]
) -> VisionConfig:
    """The `VisionConfig` of ``policy.obs_encoder`` (``pool="avg"``) and the policy's image normaliser."""
    enc = _encoder(path, pol)
    model = enc.get("rgb_model")
    target = model.get("_target_") if isinstance(model, Mapping) else model
    if target != _GET_RESNET or model.get("name") != "resnet18":
        name = model.get("name") if isinstance(model, Mapping) else None
        what = f"obs_encoder.rgb_model {target!r} (name {name!r})"
        raise refuse(path, f"{what} is not supported; only get_resnet with name 'resnet18'")
    if str(model.get("weights")).lower() == "r3m":
        raise refuse(path, "obs_encoder.rgb_model.weights='r3m' is not supported (R3M's module names differ)")
    if enc.get("resize_shape") is not None:
        resize = enc["resize_shape"]
        raise refuse(path, f"obs_encoder.resize_shape={resize} (image resizing) is not supported")
    crop = enc.get("crop_shape")
    if isinstance(crop, Mapping):
        crop = crop.get(layout.image)
    if crop is not None:
        crop = (int(crop[0]), int(crop[1])) if bool(enc.get("random_crop", True)) else None
    C, H, W = layout.image_shape
    scale, offset = image_affine(path, layout, state, C)
    mean, std = -offset / scale, 1.0 / scale
    if bool(enc.get("imagenet_norm", False)):
        if C != 3:
            raise refuse(path, f"obs_encoder.imagenet_norm needs 3 image channels, not {C}")
        m = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
        s = torch.tensor(IMAGENET_STD, dtype=torch.float64)
        mean, std = (m - offset) / scale, s / scale
    # MultiImageObsEncoder swaps BatchNorm for GroupNorm in its per-camera copies only (a shared one keeps it)
    group_norm = bool(enc.get("use_group_norm", False)) and not bool(enc.get("share_rgb_model", False))
    try:
        return VisionConfig(
            image_shape=(C, H, W),
            crop_shape=crop,
            norm="group_norm" if group_norm else "batch_norm",
            pool="avg",
            image_mean=tuple(float(v) for v in mean),
            image_std=tuple(float(v) for v in std),
        )
    except ValueError as exc:
        raise refuse(path, f"its image encoder cannot be represented: {exc}") from exc


def multi_image_weights(
    path: Path,
    prefix: str,
    layout: ImageLayout,
    state: Mapping[str, torch.Tensor],
    config: PolicyConfig,
    network: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Our `VisionUnet`'s tensors (``unet.*``: the U-Net, its condition reordered; ``rgb_encoder.*``) and
    the checkpoint names the encoder consumed.

    Args:
        path: the checkpoint (for messages).
        prefix: the camera's ResNet prefix (`encoder_prefix`).
        layout: its observation layout (`multi_image_layout`).
        state: its policy state dict.
        config: the policy config built from it.
        network: the U-Net's tensors (``model.`` stripped).
    """
    encoder = {
        f"rgb_encoder.backbone.{trunk_name(name[len(prefix) :])}": t
        for name, t in state.items()
        if name.startswith(prefix)
    }
    if not encoder:
        raise refuse(path, f"its state dict has no image encoder tensors under {prefix}")
    consumed = {name for name in state if name.startswith(prefix)}
    network = reorder_condition(network, layout, config.n_obs_steps, config.vision.feature_dim)
    return {f"unet.{k}": t for k, t in network.items()} | encoder, consumed
