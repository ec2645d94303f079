"""Diffusion Policy's image policy (``DiffusionUnetHybridImagePolicy``) in: its robomimic encoder and
image normaliser mapped onto this project's `RgbEncoder` and `VisionConfig`.

Diffusion Policy builds the encoder with robomimic (``VisualCore``: ResNet18Conv -> SpatialSoftmax ->
Flatten -> Linear, then the observation encoder's ReLU), which is the architecture `vision.RgbEncoder`
implements under LeRobot's names. robomimic registers the backbone and the pool twice (``backbone`` /
``nets.0``, ``pool`` / ``nets.1``), so a checkpoint holds each of their tensors under two names; both
must be equal. Mapping (``obs_encoder.obs_nets.<camera>.`` -> ``rgb_encoder.``): ``backbone.nets.<i>``
-> ``backbone.<i>``, ``pool.nets`` -> ``pool.nets`` (the softmax temperature folded into it),
``nets.3`` -> ``out``; the spatial-softmax grid (``pool.pos_x`` / ``pos_y``) must equal ours.

Conditioning: robomimic concatenates each step's features in the order of the config's observation keys
(``shape_meta``: PushT's lists the image first, so [image features, agent_pos]), while this project
conditions on [state, image features]; the U-Net's FiLM layers get their condition columns reordered
to match, so the network computes the same function. Images: Diffusion Policy scales them to [0, 1] and
its normaliser applies ``x * scale + offset`` (``[0, 1] -> [-1, 1]``), i.e. mean ``-offset / scale`` and
std ``1 / scale`` per channel here. No hydra imports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from parapolicy.policy.config import PolicyConfig, VisionConfig
from parapolicy.policy.model.diffusion_policy_payload import refuse
from parapolicy.policy.model.vision import keypoint_grid

__all__ = [
    "HYBRID_POLICY",
    "HYBRID_TRANSFORMER_POLICY",
    "ImageLayout",
    "image_affine",
    "image_layout",
    "image_policy_weights",
    "reorder_condition",
    "vision_config",
]

HYBRID_POLICY = "diffusion_policy.policy.diffusion_unet_hybrid_image_policy.DiffusionUnetHybridImagePolicy"
HYBRID_TRANSFORMER_POLICY = (
    "diffusion_policy.policy.diffusion_transformer_hybrid_image_policy.DiffusionTransformerHybridImagePolicy"
)
_NORMALIZER = "normalizer.params_dict."


@dataclass(frozen=True)
class ImageLayout:
    """The observation keys of a hybrid image policy: one camera and one low-dim state.

    Attributes:
        image: the camera's key (``image`` for PushT); ``image_shape`` its (C, H, W).
        state: the low-dim key (``agent_pos``); ``state_dim`` its width.
        image_first: whether robomimic puts the image features before the state (key order).
    """

    image: str
    image_shape: tuple[int, ...]
    state: str
    state_dim: int
    image_first: bool

    @property
    def encoder(self) -> str:
        """The prefix of the camera's encoder tensors in the policy state dict."""
        return f"obs_encoder.obs_nets.{self.image}."


def image_layout(path: Path, pol: Mapping[str, Any]) -> ImageLayout:
    """The observation layout of the policy section's ``shape_meta``; refuses anything but one camera
    and one low-dim state."""
    obs = pol.get("shape_meta", {}).get("obs") if isinstance(pol.get("shape_meta"), Mapping) else None
    if not isinstance(obs, Mapping) or not obs:
        raise refuse(path, "its policy config has no shape_meta.obs")
    kinds = {
        key: (attr if isinstance(attr, Mapping) else {}).get("type", "low_dim") for key, attr in obs.items()
    }
    rgb = [k for k, kind in kinds.items() if kind == "rgb"]
    low = [k for k, kind in kinds.items() if kind == "low_dim"]
    if len(rgb) != 1 or len(low) != 1 or len(kinds) != 2:
        raise refuse(
            path,
            f"observation keys {kinds} are not supported: only one camera ('rgb') and one low-dim state, "
            "as PushT's image policy has",
        )
    try:
        image_shape = tuple(int(d) for d in obs[rgb[0]]["shape"])
        state_shape = tuple(int(d) for d in obs[low[0]]["shape"])
    except (KeyError, TypeError, ValueError) as exc:
        raise refuse(path, f"shape_meta.obs needs a 'shape' list of integers per key: {exc!r}") from exc
    if len(image_shape) != 3 or len(state_shape) != 1:
        raise refuse(path, f"shapes {image_shape} (camera) / {state_shape} (state) must be (C, H, W) / (D,)")
    order = list(kinds)
    return ImageLayout(rgb[0], image_shape, low[0], state_shape[0], order.index(rgb[0]) < order.index(low[0]))


def vision_config(
    path: Path, pol: Mapping[str, Any], layout: ImageLayout, state: Mapping[str, torch.Tensor]
) -> VisionConfig:
    """The `VisionConfig` of the hybrid policy: crop, norm, keypoints (from the pool's shape) and the
    image statistics of its normaliser."""
    crop = pol.get("crop_shape")
    C, H, W = layout.image_shape
    if crop is not None:
        crop = (int(crop[0]), int(crop[1]))
        if not pol.get("eval_fixed_crop", False) and ((H - crop[0]) % 2 or (W - crop[1]) % 2):
            # robomimic's own evaluation crop floors the offset; torchvision's (eval_fixed_crop) rounds it
            raise refuse(path, f"crop {crop} of {(H, W)} with eval_fixed_crop=False: the offsets differ here")
    pool = state.get(f"{layout.encoder}pool.nets.weight")
    if pool is None or pool.dim() != 4:
        raise refuse(path, f"its state dict has no spatial-softmax layer {layout.encoder}pool.nets.weight")
    K = int(pool.shape[0])
    linear = state.get(f"{layout.encoder}nets.3.weight")
    if linear is None or tuple(linear.shape) != (2 * K, 2 * K):
        found = "missing" if linear is None else f"shape {tuple(linear.shape)}"
        raise refuse(
            path,
            f"{layout.encoder}nets.3.weight must be ({2 * K}, {2 * K}) (the {K} keypoints' coordinates to as "
            f"many features, as robomimic's VisualCore has for Diffusion Policy), {found}",
        )
    scale, offset = image_affine(path, layout, state, C)
    try:
        return VisionConfig(
            image_shape=(C, H, W),
            crop_shape=crop,
            norm="group_norm" if pol.get("obs_encoder_group_norm", False) else "batch_norm",
            num_keypoints=K,
            image_mean=tuple(float(v) for v in -offset / scale),
            image_std=tuple(float(v) for v in 1.0 / scale),
        )
    except ValueError as exc:
        raise refuse(path, f"its image encoder cannot be represented: {exc}") from exc


def image_affine(
    path: Path, layout: ImageLayout, state: Mapping[str, torch.Tensor], channels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(C,) float64 scale and offset of the image normaliser (one value broadcast to every channel)."""
    out = []
    for name in ("scale", "offset"):
        key = f"{_NORMALIZER}{layout.image}.{name}"
        t = state.get(key)
        if t is None or t.numel() not in (1, channels):
            found = "missing" if t is None else f"{t.numel()} values"
            raise refuse(path, f"image normaliser tensor {key} must hold 1 or {channels} values, {found}")
        out.append(t.reshape(-1).to(torch.float64).expand(channels))
    if not bool((out[0] > 0).all()):
        raise refuse(path, f"image normaliser scale {out[0].tolist()} must be positive")
    return out[0], out[1]


def image_policy_weights(
    path: Path,
    layout: ImageLayout,
    state: Mapping[str, torch.Tensor],
    config: PolicyConfig,
    network: dict[str, torch.Tensor],
    feature_hw: tuple[int, int],
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Our `VisionUnet`'s tensors (``unet.*``: the denoiser, its condition reordered; ``rgb_encoder.*``)
    from the checkpoint's denoiser weights (``model.`` stripped) and encoder, and the checkpoint names
    the encoder consumed.

    Args:
        path: the checkpoint (for messages).
        layout: its observation layout (`image_layout`).
        state: its policy state dict.
        config: the policy config built from it (`vision_config` supplied its vision part).
        network: the denoiser's tensors (U-Net or transformer).
        feature_hw: (h, w) of the encoder's feature map (`RgbEncoder.feature_shape`).

    Raises:
        CheckpointError: naming an encoder tensor that does not fit.
    """
    encoder, consumed = _encoder_weights(path, state, layout, keypoint_grid(*feature_hw))
    network = reorder_condition(network, layout, config.n_obs_steps, config.vision.feature_dim)
    return {f"unet.{k}": t for k, t in network.items()} | encoder, consumed  # VisionUnet's name


def _encoder_weights(
    path: Path, state: Mapping[str, torch.Tensor], layout: ImageLayout, pos_grid: torch.Tensor
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Our ``rgb_encoder.*`` tensors from the checkpoint's, and the checkpoint names they consumed.

    Args:
        path: the checkpoint (for messages).
        state: the policy state dict.
        layout: the observation layout.
        pos_grid: (H*W, 2) our spatial-softmax grid for the encoder's feature map.
    """
    prefix, out, used = layout.encoder, {}, set()
    for name, tensor in state.items():
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix) :]
        used.add(name)
        if rest.startswith("backbone.nets."):
            out[f"rgb_encoder.backbone.{rest[len('backbone.nets.') :]}"] = tensor
            _check_alias(path, state, name, f"{prefix}nets.0.nets.{rest[len('backbone.nets.') :]}")
        elif rest.startswith("nets.3."):
            out[f"rgb_encoder.out.{rest[len('nets.3.') :]}"] = tensor
        elif rest.startswith("pool.") or rest.startswith("nets.0.") or rest.startswith("nets.1."):
            if rest.startswith("pool."):
                _check_alias(path, state, name, f"{prefix}nets.1.{rest[len('pool.') :]}")
        else:
            used.discard(name)  # left for the caller's unexpected-tensor check
    temperature = _tensor(path, state, f"{prefix}pool.temperature")
    if temperature.numel() != 1 or not float(temperature) > 0:
        raise refuse(path, f"spatial-softmax temperature {temperature.tolist()} must be one positive value")
    for name in ("weight", "bias"):  # softmax(conv(x) / T) == softmax(conv_T(x)), conv_T = conv / T
        t = _tensor(path, state, f"{prefix}pool.nets.{name}")
        out[f"rgb_encoder.pool.nets.{name}"] = t if float(temperature) == 1.0 else t / temperature.reshape(())
    grid = torch.stack([_tensor(path, state, f"{prefix}pool.pos_{a}").reshape(-1) for a in "xy"], dim=1)
    if grid.shape != pos_grid.shape or not torch.allclose(grid.to(pos_grid), pos_grid, atol=1e-6, rtol=0):
        raise refuse(
            path,
            f"its spatial-softmax grid ({tuple(grid.shape)}) is not the [-1, 1] grid of the encoder's "
            f"{tuple(pos_grid.shape)} feature map",
        )
    out["rgb_encoder.pool.pos_grid"] = pos_grid
    return out, used


def reorder_condition(
    network: dict[str, torch.Tensor], layout: ImageLayout, n_obs_steps: int, feature_dim: int
) -> dict[str, torch.Tensor]:
    """The denoiser's condition weights with each step's columns in this project's [state, image]
    order (a no-op when the checkpoint's key order already is).

    U-Net: every FiLM ``cond_encoder.1.weight`` is (out, E + To * (Ds + F)), the timestep embedding's E
    columns then the To steps' features. Transformer: ``cond_obs_emb.weight`` is (E, Ds + F), one
    observation token per step.
    """
    if not layout.image_first:
        return network
    Ds, F = layout.state_dim, feature_dim
    step = torch.cat([torch.arange(F, F + Ds), torch.arange(F)])  # ours (state, image) <- theirs
    cond = torch.cat([step + s * (Ds + F) for s in range(n_obs_steps)])  # (To * (Ds + F),)
    out = dict(network)
    for name, w in network.items():
        if name.endswith("cond_encoder.1.weight"):
            E = w.shape[1] - cond.numel()
            out[name] = torch.cat([w[:, :E], w[:, E:].index_select(1, cond)], dim=1)
        elif name == "cond_obs_emb.weight":
            out[name] = w.index_select(1, step)
    return out


def _check_alias(path: Path, state: Mapping[str, torch.Tensor], name: str, alias: str) -> None:
    """robomimic's second name of a shared tensor must hold the same values (when present)."""
    other = state.get(alias)
    if other is not None and not torch.equal(other, state[name]):
        raise refuse(path, f"{alias} differs from {name}: they are one module in Diffusion Policy's encoder")


def _tensor(path: Path, state: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    t = state.get(name)
    if t is None:
        raise refuse(path, f"its state dict has no {name}")
    return t
