"""Image observation encoder (Diffusion Policy / robomimic style) and the image-conditioned U-Net.

`RgbEncoder`: crop (random in training, centred in evaluation) -> torchvision ResNet trunk without
avgpool / fc (BatchNorm replaced by GroupNorm(C // 16, C) unless ``norm="batch_norm"``) -> spatial
softmax over K learned keypoint maps -> Linear(2K, 2K) -> ReLU. Module names follow LeRobot's
``DiffusionRgbEncoder`` (``backbone.{0..7}``, ``pool.nets``, ``pool.pos_grid``, ``out``), so its
weights map one to one (see `lerobot_format.py`). With ``pool="avg"`` the trunk's feature map is
averaged instead (torchvision's avgpool, as Diffusion Policy's ``MultiImageObsEncoder`` uses a ResNet
whose ``fc`` is the identity), and there is no ``pool`` or ``out``.

`VisionUnet` holds the U-Net (``unet``), the encoder (``rgb_encoder``) and the fixed per-channel
image statistics; its ``forward`` is the U-Net's, so the samplers, tracing and CUDA graphs see the
same denoiser signature ``(x, t, cond)``. The encoder runs once per chunk, in `encode`, before
sampling; only the U-Net is iterated (sequentially or by Picard).

The ResNet trunk is built here with torchvision's layout and initialisation (`resnet_trunk`), so
nothing is ever downloaded and torchvision is not a dependency; pretrained weights come only from a
local safetensors file with torchvision's names (``VisionConfig.backbone_weights``).

No hydra imports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from parapolicy.policy.config import PolicyConfig, VisionConfig
from parapolicy.policy.model.checkpoint import check_state_dict, read_tensors
from parapolicy.policy.model.networks import ConditionalUnet1d
from parapolicy.policy.model.transformer import TransformerDenoiser

__all__ = [
    "BasicBlock",
    "RgbEncoder",
    "resnet_trunk",
    "init_backbones",
    "SpatialSoftmax",
    "trunk_name",
    "VisionUnet",
    "build_network",
    "center_crop",
    "draw_crop_offsets",
    "keypoint_grid",
    "random_crop",
]


def center_crop(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Centre crop of (N, C, H, W) to (N, C, h, w); the offset rounds like torchvision's CenterCrop."""
    H, W = x.shape[-2:]
    h, w = size
    top, left = int(round((H - h) / 2.0)), int(round((W - w) / 2.0))
    return x[..., top : top + h, left : left + w]


def draw_crop_offsets(
    n: int, image_hw: tuple[int, int], size: tuple[int, int], generator: torch.Generator | None = None
) -> Tensor:
    """(n, 2) uniformly drawn (top, left) offsets of (h, w) crops of (H, W) images (tops drawn first)."""
    (H, W), (h, w) = image_hw, size
    top = torch.randint(0, H - h + 1, (n,), generator=generator)  # (n,)
    left = torch.randint(0, W - w + 1, (n,), generator=generator)  # (n,)
    return torch.stack((top, left), dim=1)  # (n, 2)


def random_crop(
    x: Tensor, size: tuple[int, int], generator: torch.Generator | None = None, offsets: Tensor | None = None
) -> Tensor:
    """An independent uniformly placed (h, w) crop of every image of (N, C, H, W) -> (N, C, h, w).

    ``offsets`` (N, 2) gives the (top, left) corners (`draw_crop_offsets`); by default they are drawn
    from ``generator``.
    """
    N, _, H, W = x.shape
    h, w = size
    if offsets is None:
        offsets = draw_crop_offsets(N, (H, W), size, generator)
    top, left = offsets.to(x.device).unbind(1)  # (N,), (N,)
    rows = top[:, None] + torch.arange(h, device=x.device)  # (N, h)
    cols = left[:, None] + torch.arange(w, device=x.device)  # (N, w)
    n = torch.arange(N, device=x.device)[:, None, None]  # (N, 1, 1)
    return x.permute(0, 2, 3, 1)[n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (N, C, h, w)


def keypoint_grid(height: int, width: int) -> Tensor:
    """(H*W, 2) float32 (x, y) coordinates of each cell of an H x W map on a [-1, 1] grid, x varying
    fastest (float64 linspace then float32, as numpy computes it in the references)."""
    xs, ys = np.meshgrid(np.linspace(-1.0, 1.0, width), np.linspace(-1.0, 1.0, height))  # (H, W) each
    return torch.from_numpy(np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1)).float()  # (H*W, 2)


class SpatialSoftmax(nn.Module):
    """Keypoints as the softmax-weighted mean position of K learned feature maps (Finn et al. 2016).

    ``nets`` (1x1 conv, C -> K) makes the maps; ``pos_grid`` (H*W, 2) holds `keypoint_grid`, a
    persistent buffer as in the references.
    """

    def __init__(self, feature_shape: tuple[int, int, int], num_keypoints: int) -> None:
        super().__init__()
        C, H, W = feature_shape
        self.nets = nn.Conv2d(C, num_keypoints, kernel_size=1)
        self.num_keypoints = num_keypoints
        self.register_buffer("pos_grid", keypoint_grid(H, W))

    def forward(self, features: Tensor) -> Tensor:
        """(N, C, H, W) feature maps -> (N, K, 2) expected keypoint positions."""
        maps = self.nets(features)  # (N, K, H, W)
        attention = F.softmax(maps.flatten(2), dim=-1)  # (N, K, H*W)
        return attention @ self.pos_grid  # (N, K, 2)


def _norm(kind: str, channels: int) -> nn.Module:
    """BatchNorm2d, or GroupNorm(C // 16, C) (the references' replacement for it)."""
    if kind == "group_norm":
        return nn.GroupNorm(num_groups=channels // 16, num_channels=channels)
    return nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs, identity or 1x1-conv shortcut), torchvision's names."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm(norm, c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = _norm(norm, c_out)
        self.downsample = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), _norm(norm, c_out))
            if stride != 1 or c_in != c_out
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, H / stride, W / stride)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


# (blocks per stage) of the supported backbones; widths are 64, 128, 256, 512
_RESNET_STAGES = {"resnet18": (2, 2, 2, 2)}


def resnet_trunk(cfg: VisionConfig) -> nn.Sequential:
    """ResNet without avgpool and fc, laid out as torchvision's children (so its weights load by name).

    Children: 0 conv1 (7x7, stride 2), 1 bn1, 2 relu, 3 maxpool, 4-7 layer1-4. Initialised as torchvision
    does (Kaiming-normal fan-out convs, unit norm weights, zero biases). Written here rather than imported
    from torchvision: no dependency, and nothing can be downloaded. An (N, 3, 84, 84) input gives
    (N, 512, 3, 3).
    """
    norm, widths = cfg.norm, (64, 128, 256, 512)
    layers: list[nn.Module] = [
        nn.Conv2d(cfg.image_shape[0], 64, 7, stride=2, padding=3, bias=False),
        _norm(norm, 64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    ]
    c_in = 64
    for stage, (n_blocks, width) in enumerate(zip(_RESNET_STAGES[cfg.backbone], widths, strict=True)):
        stride = 1 if stage == 0 else 2
        blocks = [
            BasicBlock(c_in if b == 0 else width, width, stride if b == 0 else 1, norm)
            for b in range(n_blocks)
        ]
        layers.append(nn.Sequential(*blocks))
        c_in = width
    trunk = nn.Sequential(*layers)
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return trunk


# torchvision's top-level names -> our trunk's child index
_TORCHVISION_CHILDREN = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}


def trunk_name(torchvision_name: str) -> str:
    """Our trunk's name of a torchvision ResNet tensor: ``layer1.0.bn1.weight`` -> ``4.0.bn1.weight``
    (names outside the trunk come back unchanged, for the strict check to report)."""
    head, _, rest = torchvision_name.partition(".")
    return f"{_TORCHVISION_CHILDREN.get(head, head)}.{rest}"


def init_backbones(network: nn.Module, path: str | Path) -> None:
    """Load torchvision ResNet weights (``vision.backbone_weights``) into the trunk of every image encoder
    of ``network``: training's initialisation, not part of the architecture (a checkpoint loads its own
    trunk weights, without the file)."""
    for module in network.modules():
        if isinstance(module, RgbEncoder):
            _load_backbone_weights(module.backbone, Path(path))


def _load_backbone_weights(trunk: nn.Module, path: Path) -> None:
    """Load torchvision-named ResNet weights (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...; ``fc.*``
    ignored) from a local safetensors file, strictly (never a pickle)."""
    tensors = {}
    for name, value in read_tensors(path).items():
        if name.partition(".")[0] == "fc":
            continue
        tensors[trunk_name(name)] = value
    check_state_dict(trunk.state_dict(), tensors, f"backbone weights {path}")
    trunk.load_state_dict(tensors, strict=True)


class RgbEncoder(nn.Module):
    """One camera image -> a feature vector (module names as LeRobot's DiffusionRgbEncoder).

    Args:
        cfg: the vision config (image shape, crop, backbone, norm, keypoints).
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.crop_shape = cfg.crop_shape
        self.crop_is_random = cfg.crop_is_random
        self.image_hw = tuple(cfg.image_shape[1:])
        self.backbone = resnet_trunk(cfg)
        h, w = cfg.crop_shape or cfg.image_shape[1:]
        with torch.no_grad():
            probe = torch.zeros(1, cfg.image_shape[0], h, w)
            feature_shape = tuple(self.backbone.eval()(probe).shape[1:])  # (512, 3, 3) for 84 x 84
        self.backbone.train()
        self.feature_shape: tuple[int, ...] = feature_shape  # (C, h, w) of the trunk's output
        self.pool_kind = cfg.pool
        if cfg.pool == "spatial_softmax":
            self.pool = SpatialSoftmax(feature_shape, cfg.num_keypoints)
            self.out = nn.Linear(cfg.feature_dim, cfg.feature_dim)
        self.feature_dim = cfg.feature_dim

    def draw_crops(self, n: int, generator: torch.Generator | None = None) -> Tensor | None:
        """The (n, 2) random crop offsets `crop` would draw for n images now (None: it draws none)."""
        if self.crop_shape is None or not (self.training and self.crop_is_random):
            return None
        return draw_crop_offsets(n, self.image_hw, self.crop_shape, generator)

    def crop(
        self, x: Tensor, generator: torch.Generator | None = None, offsets: Tensor | None = None
    ) -> Tensor:
        """(N, C, H, W) -> (N, C, h, w): random per image in training (at ``offsets`` when given,
        else drawn from ``generator``), centred in evaluation."""
        if self.crop_shape is None:
            return x
        if self.training and self.crop_is_random:
            return random_crop(x, self.crop_shape, generator, offsets)
        return center_crop(x, self.crop_shape)

    def forward(
        self, x: Tensor, generator: torch.Generator | None = None, offsets: Tensor | None = None
    ) -> Tensor:
        """(N, C, H, W) normalised images -> (N, F) features (F = 2K, or 512 with ``pool="avg"``;
        ``offsets``: see `crop`)."""
        x = self.crop(x, generator, offsets)  # (N, C, h, w)
        maps = self.backbone(x)  # (N, 512, h', w')
        if self.pool_kind == "avg":
            return F.adaptive_avg_pool2d(maps, 1).flatten(1)  # (N, 512): torchvision's avgpool + flatten
        keypoints = self.pool(maps)  # (N, K, 2)
        return F.relu(self.out(keypoints.flatten(1)))  # (N, 2K)


class VisionUnet(nn.Module):
    """The denoiser of an image policy: ``unet`` plus the observation encoder ``rgb_encoder``.

    ``forward(x, t, cond)`` is the U-Net alone; `encode` turns observations into ``cond``. The image
    statistics (``image_mean``, ``image_std``, (C, 1, 1)) come from the config (non-persistent buffers).
    """

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        v = config.vision
        self.unet = _make_denoiser(config)  # the U-Net or the transformer ("unet": the checkpoints' name)
        self.rgb_encoder = RgbEncoder(v)
        # derived from the config (its one source), so not saved with the weights
        self.register_buffer("image_mean", torch.tensor(v.image_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(v.image_std).view(-1, 1, 1), persistent=False)

    def forward(self, sample: Tensor, timestep: Tensor, global_cond: Tensor) -> Tensor:
        """The denoiser: (B, H, Da), (B,), (B, C) -> (B, H, Da)."""
        return self.unet(sample, timestep, global_cond)

    def encode(
        self,
        pixels: Tensor,
        state: Tensor,
        generator: torch.Generator | None = None,
        crops: Tensor | None = None,
    ) -> Tensor:
        """The FiLM condition of a batch of observation histories.

        Args:
            pixels: (B, To, H, W, C) uint8 images (as the environment renders them).
            state: (B, To, Ds) normalised agent state.
            generator: optional generator for the training crops.
            crops: (B*To, 2) training crop offsets (`RgbEncoder.draw_crops`; sample-major, as
                ``pixels.flatten(0, 1)``) instead of drawing them.

        Returns:
            (B, To * (Ds + 2K)): per step [state, image features] (LeRobot's order), steps in order.
        """
        B, To = pixels.shape[:2]
        images = pixels.flatten(0, 1).permute(0, 3, 1, 2).float() / 255.0  # (B*To, C, H, W) in [0, 1]
        images = (images - self.image_mean) / self.image_std  # (B*To, C, H, W)
        features = self.rgb_encoder(images, generator, crops).view(B, To, -1)  # (B, To, 2K)
        return torch.cat((state, features), dim=-1).flatten(1)  # (B, To*(Ds + 2K))


def _make_unet(config: PolicyConfig) -> ConditionalUnet1d:
    u = config.unet
    return ConditionalUnet1d(
        input_dim=config.action_dim,
        global_cond_dim=config.global_cond_dim,
        diffusion_step_embed_dim=u.diffusion_step_embed_dim,
        down_dims=u.down_dims,
        kernel_size=u.kernel_size,
        n_groups=u.n_groups,
        cond_predict_scale=u.cond_predict_scale,
    )


def _make_denoiser(config: PolicyConfig) -> nn.Module:
    """The denoiser ``config.network`` names: `ConditionalUnet1d` or `TransformerDenoiser`."""
    return TransformerDenoiser(config) if config.network == "transformer" else _make_unet(config)


def build_network(config: PolicyConfig) -> nn.Module:
    """The policy's network: the denoiser (U-Net or transformer, ``config.network``) for ``state``
    policies, a `VisionUnet` around it for image policies."""
    if config.obs_type == "pixels_agent_pos":
        return VisionUnet(config)
    return _make_denoiser(config)
