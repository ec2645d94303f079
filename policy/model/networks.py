"""Denoising networks: the DiffusionPolicy 1-D temporal U-Net and its building blocks.

Holds `ConditionalUnet1d` (the noise-prediction network of Diffusion Policy, Chi et al. 2023), the
sinusoidal step embedding, the conv/GroupNorm/Mish block and the FiLM residual block (the horizon
rule, `validate_horizon`, lives in config.py and is re-exported here). The architecture, including
the reference's unused first-level skip, reproduces `ConditionalUnet1D` from
real-stanford/diffusion_policy so the parameter counts match exactly (65,783,298 for the PushT
low-dim configuration), and the `state_dict` keys use the reference's
module names, so a reference state_dict loads with `load_state_dict` unchanged.

Traceable: no Python control flow depends on tensor values, so `torch.jit.trace` of one batch size
gives the same outputs at other batch sizes.

Imports torch and the config leaf only: no hydra, no zarr, no einops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from parapolicy.policy.config import validate_horizon

__all__ = [
    "ConditionalResidualBlock1d",
    "ConditionalUnet1d",
    "Conv1d",
    "Conv1dBlock",
    "Downsample1d",
    "SinusoidalPosEmb",
    "Upsample1d",
    "validate_horizon",
]


class SinusoidalPosEmb(nn.Module):
    """Sinusoidal embedding of a (possibly fractional) diffusion timestep.

    Frequencies are `exp(-ln(10000) * i / (half - 1))` for `i in [0, half)`, `half = dim // 2`;
    the output is `[sin(t * f), cos(t * f)]`.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 4 or dim % 2 != 0:
            raise ValueError(f"embedding dim must be even and >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(torch.arange(half, dtype=torch.float32) * (-math.log(10000.0) / (half - 1)))
        # Not persistent: derived from `dim`, and absent from the reference state_dict.
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed timesteps.

        Args:
            t: (B,) integer or float timesteps.

        Returns:
            (B, dim) embedding.
        """
        arg = t.to(self.freqs.dtype)[:, None] * self.freqs[None, :]  # (B, 1) * (1, half) -> (B, half)
        return torch.cat((arg.sin(), arg.cos()), dim=-1)  # (B, dim)


# Weights at least this large take the oneDNN path on CPU at every batch size (see `Conv1d`).
_MKLDNN_MIN_WEIGHT_NUMEL = 1 << 19


class Conv1d(nn.Conv1d):
    """`nn.Conv1d` that sends large CPU float32 inference convolutions to oneDNN at any batch size.

    PyTorch's CPU heuristic runs batch-1 Conv1d through the native im2col path
    (`aten::_slow_conv2d_forward`), which parallelises over the batch and so uses one thread at
    batch 1; batch >= 2 goes to oneDNN. For weights of >= 2**19 elements oneDNN is about 2x faster
    at batch 1 on 2 threads (and no slower on 1); for small weights its per-call overhead loses.
    The choice depends only on the device, dtype, grad mode and weight size, never on the batch
    size, so a `torch.jit.trace` made at one batch size takes the same path at every other.
    Training (grad enabled) and non-CPU devices use `F.conv1d` unchanged. Parameters and
    `state_dict` are those of `nn.Conv1d`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Decided once from the static weight shape (a plain bool, so tracing records no branch).
        self.cpu_inference_mkldnn = self.weight.numel() >= _MKLDNN_MIN_WEIGHT_NUMEL

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, L) -> (B, C_out, L_out)."""
        if (
            self.cpu_inference_mkldnn
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and not torch.is_grad_enabled()
            and self.padding_mode == "zeros"
            and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled
        ):
            return torch.mkldnn_convolution(
                x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups
            )
        return F.conv1d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Conv1dBlock(nn.Sequential):
    """Conv1d(kernel_size, 'same' padding) -> GroupNorm(n_groups) -> Mish, on (B, C, L)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int = 8) -> None:
        super().__init__()
        # One child named `block` so state_dict keys read `...block.0.weight` as in the reference.
        self.block = nn.Sequential(
            Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )


class Downsample1d(nn.Module):
    """Halve the length: Conv1d(k=3, stride=2, padding=1), channels unchanged."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = Conv1d(dim, dim, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, L) -> (B, C, L // 2)."""
        return self.conv(x)


class Upsample1d(nn.Module):
    """Double the length: ConvTranspose1d(k=4, stride=2, padding=1), channels unchanged."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, L) -> (B, C, 2 * L)."""
        return self.conv(x)


class ConditionalResidualBlock1d(nn.Module):
    """Two Conv1dBlocks with FiLM conditioning in between and a residual connection.

    `h = Conv1dBlock(x)`; `h = scale * h + bias` (or `h + bias` when `cond_predict_scale` is
    False), with (scale, bias) = Linear(Mish(cond)); `h = Conv1dBlock(h)`; return `h + residual(x)`,
    where the residual is a 1x1 conv if the channel count changes and the identity otherwise.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_dim: int,
        kernel_size: int = 3,
        n_groups: int = 8,
        cond_predict_scale: bool = False,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.cond_predict_scale = cond_predict_scale
        self.blocks = nn.ModuleList(
            [
                Conv1dBlock(in_channels, out_channels, kernel_size, n_groups),
                Conv1dBlock(out_channels, out_channels, kernel_size, n_groups),
            ]
        )
        cond_channels = 2 * out_channels if cond_predict_scale else out_channels
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, cond_channels))
        self.residual_conv = (
            Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: (B, C_in, L) features.
            cond: (B, cond_dim) conditioning vector.

        Returns:
            (B, C_out, L) features.
        """
        h = self.blocks[0](x)  # (B, C_out, L)
        film = self.cond_encoder(cond)  # (B, 2*C_out) or (B, C_out)
        if self.cond_predict_scale:
            scale, bias = film.unflatten(1, (2, self.out_channels)).unbind(1)  # 2 x (B, C_out)
            h = torch.addcmul(bias[:, :, None], scale[:, :, None], h)  # scale * h + bias, (B, C_out, L)
        else:
            h = h + film[:, :, None]  # (B, C_out, L)
        h = self.blocks[1](h)
        return h + self.residual_conv(x)


class ConditionalUnet1d(nn.Module):
    """Diffusion Policy's 1-D temporal U-Net with FiLM conditioning on the step and observation.

    Layout (`down_dims = (256, 512, 1024)`, H = 16): encoder levels (Da->256) at L=16, (256->512)
    at L=8, (512->1024) at L=4, each two residual blocks whose output is pushed to a skip stack,
    then a stride-2 downsample except after the last level; two middle blocks at 1024; decoder
    levels (512<-1024) and (256<-512) that concatenate the popped skip, apply two residual blocks
    and upsample (L 4 -> 8 -> 16); head Conv1dBlock(256->256) -> Conv1d(256->Da, 1).
    As in the reference, the first level's skip is pushed but never popped. One deliberate
    difference: the reference's head Conv1dBlock always uses 8 GroupNorm groups, ignoring
    `n_groups`; here it uses `n_groups` (identical for the default 8, and no parameter changes).

    The condition vector fed to every FiLM layer is `concat(step_embedding, global_cond)`.

    Args:
        input_dim: action dimension Da.
        global_cond_dim: size C of the flattened observation conditioning (e.g. To * Do).
        diffusion_step_embed_dim: width d of the step embedding (sinusoid -> d -> 4d -> d).
        down_dims: channel widths of the encoder levels.
        kernel_size: temporal kernel size of the Conv1dBlocks (odd).
        n_groups: GroupNorm groups; must divide every width in `down_dims`.
        cond_predict_scale: FiLM predicts scale and bias (True) or bias only (False).
    """

    def __init__(
        self,
        input_dim: int,
        global_cond_dim: int,
        diffusion_step_embed_dim: int = 256,
        down_dims: tuple[int, ...] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        cond_predict_scale: bool = True,
    ) -> None:
        super().__init__()
        down_dims = tuple(int(d) for d in down_dims)
        if not down_dims:
            raise ValueError("down_dims must name at least one level")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to preserve the length, got {kernel_size}")
        bad = [d for d in down_dims if d % n_groups != 0]
        if bad:
            raise ValueError(f"n_groups={n_groups} must divide every width in down_dims={down_dims}")
        self.input_dim = input_dim
        self.global_cond_dim = global_cond_dim
        self.down_dims = down_dims

        dsed = diffusion_step_embed_dim
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(dsed),
            nn.Linear(dsed, 4 * dsed),
            nn.Mish(),
            nn.Linear(4 * dsed, dsed),
        )
        cond_dim = dsed + global_cond_dim

        def res_block(c_in: int, c_out: int) -> ConditionalResidualBlock1d:
            return ConditionalResidualBlock1d(
                c_in, c_out, cond_dim, kernel_size, n_groups, cond_predict_scale
            )

        all_dims = (input_dim, *down_dims)
        in_out = list(zip(all_dims[:-1], all_dims[1:], strict=True))
        n_levels = len(in_out)

        self.down_modules = nn.ModuleList(
            nn.ModuleList(
                [
                    res_block(c_in, c_out),
                    res_block(c_out, c_out),
                    Downsample1d(c_out) if level < n_levels - 1 else nn.Identity(),
                ]
            )
            for level, (c_in, c_out) in enumerate(in_out)
        )
        mid = down_dims[-1]
        self.mid_modules = nn.ModuleList([res_block(mid, mid), res_block(mid, mid)])
        # Decoder over all levels but the first (reference quirk): every level upsamples.
        self.up_modules = nn.ModuleList(
            nn.ModuleList([res_block(2 * c_out, c_in), res_block(c_in, c_in), Upsample1d(c_in)])
            for c_in, c_out in reversed(in_out[1:])
        )
        start = down_dims[0]
        self.final_conv = nn.Sequential(
            Conv1dBlock(start, start, kernel_size, n_groups),
            Conv1d(start, input_dim, 1),
        )

    def num_parameters(self) -> int:
        """Total number of parameters (works on the meta device)."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, global_cond: torch.Tensor
    ) -> torch.Tensor:
        """Predict the noise (or x0) for a batch of noisy action sequences.

        Args:
            sample: (B, H, Da) noisy actions; H divisible by `2 ** (len(down_dims) - 1)`.
            timestep: (B,) or 0-d tensor of diffusion timesteps (long or float), already on the
                sample's device; a 0-d (or one-element) tensor is broadcast to the batch.
                Python numbers are rejected (they would cost a host-to-device copy per call).
            global_cond: (B, C) flattened observation conditioning.

        Returns:
            (B, H, Da) prediction.
        """
        if not isinstance(timestep, torch.Tensor):
            raise TypeError(
                f"timestep must be a tensor on the sample's device, got {type(timestep).__name__}"
            )
        if not torch.jit.is_tracing():  # sizes are symbolic under trace; a bad H then fails in torch.cat
            validate_horizon(sample.shape[1], self.down_dims)
        B = sample.shape[0]
        x = sample.transpose(1, 2)  # (B, H, Da) -> (B, Da, H), channels-first for Conv1d
        t = timestep.reshape(-1).expand(B)  # () or (1,) or (B,) -> (B,)
        cond = torch.cat((self.diffusion_step_encoder(t), global_cond), dim=-1)  # (B, dsed + C)

        skips = []
        for res1, res2, down in self.down_modules:
            x = res2(res1(x, cond), cond)
            skips.append(x)
            x = down(x)
        for block in self.mid_modules:
            x = block(x, cond)
        for res1, res2, up in self.up_modules:
            x = torch.cat((x, skips.pop()), dim=1)  # (B, 2*C_out, L)
            x = up(res2(res1(x, cond), cond))
        x = self.final_conv(x)  # (B, Da, H)
        return x.transpose(1, 2)  # (B, Da, H) -> (B, H, Da)
