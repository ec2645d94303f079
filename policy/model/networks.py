"""Denoising networks: the DiffusionPolicy 1-D temporal U-Net and its building blocks.

Holds `ConditionalUnet1d` (the noise-prediction network of Diffusion Policy, Chi et al. 2023), the
sinusoidal step embedding, the conv/GroupNorm/Mish block and the FiLM residual block (the horizon
rule, `validate_horizon`, lives in config.py and is re-exported here). The architecture, including
the reference's unused first-level skip, reproduces `ConditionalUnet1D` from
real-stanford/diffusion_policy so the parameter counts match exactly (65,783,298 for the PushT
low-dim configuration), and the `state_dict` keys use the reference's
module names, so a reference state_dict loads with `load_state_dict` unchanged.

Traceable: no Python control flow depends on tensor values or on the batch size, so a `torch.jit.trace`
made at one batch size runs the same operations at every other.

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
    "ConvTranspose1d",
    "Downsample1d",
    "GroupNorm1d",
    "SinusoidalPosEmb",
    "Upsample1d",
    "is_cpu_inference",
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


def is_cpu_inference(x: torch.Tensor) -> bool:
    """Whether ``x`` is a float32 CPU tensor seen with grad disabled: the calls `ConditionalUnet1d`
    runs in its inference layout (a static fact: tracing records no branch on values)."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()


def _channels_last_weight(conv: nn.Conv1d | nn.ConvTranspose1d) -> torch.Tensor:
    """``conv.weight`` (A, B, k) as a (A, B, 1, k) channels-last copy for the 2-D convolution of the
    inference layout, cached on the module until the weight changes (in place, or moved to another
    device or dtype; the in-place changes of an inference tensor go unseen: it keeps no version
    counter). A trace records the copy as a constant; `DiffusionPolicy` traces again when its
    weights are loaded."""
    w = conv.weight
    version = -1 if w.is_inference() else w._version  # inference tensors keep no version counter
    key = (version, w.data_ptr(), w.device, w.dtype)
    if getattr(conv, "_channels_last_key", None) != key:
        conv._channels_last = w.detach().unsqueeze(2).contiguous(memory_format=torch.channels_last)
        conv._channels_last_key = key
    return conv._channels_last


class Conv1d(nn.Conv1d):
    """`nn.Conv1d` that also takes the inference layout of `ConditionalUnet1d`: (1, C, R, L) channels
    last, run as a 2-D convolution with a (1, k) kernel and a cached channels-last weight (the R rows
    never mix).

    3-D input runs `F.conv1d` unchanged. Parameters and `state_dict` are those of `nn.Conv1d`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, L) -> (B, C_out, L_out), or (1, C_in, R, L) -> (1, C_out, R, L_out)."""
        if x.dim() == 4:
            return F.conv2d(
                x,
                _channels_last_weight(self),
                self.bias,
                (1, self.stride[0]),
                (0, self.padding[0]),
                (1, self.dilation[0]),
                self.groups,
            )
        return F.conv1d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ConvTranspose1d(nn.ConvTranspose1d):
    """`nn.ConvTranspose1d` that also takes the inference layout of `ConditionalUnet1d` (see `Conv1d`).

    3-D input runs `F.conv_transpose1d` unchanged. Parameters and `state_dict` are those of
    `nn.ConvTranspose1d`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, L) -> (B, C_out, L_out), or (1, C, R, L) -> (1, C_out, R, L_out)."""
        if x.dim() == 4:
            return F.conv_transpose2d(
                x,
                _channels_last_weight(self),
                self.bias,
                (1, self.stride[0]),
                (0, self.padding[0]),
                (0, self.output_padding[0]),
                self.groups,
                (1, self.dilation[0]),
            )
        return super().forward(x)


class GroupNorm1d(nn.GroupNorm):
    """`nn.GroupNorm` over (B, C, L) that also takes the inference layout of `ConditionalUnet1d`:
    (1, C, R, L) channels last, normalised per row on its (R, C, 1, L) channels-last view (the same
    memory: row r's (L, C) block is image r). Parameters and `state_dict` are those of
    `nn.GroupNorm`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, L) -> (B, C, L), or (1, C, R, L) -> (1, C, R, L)."""
        if x.dim() != 4:
            return super().forward(x)
        C, R, L = self.num_channels, x.shape[2], x.shape[3]
        x = x.contiguous(memory_format=torch.channels_last)  # (a no-op in the network)
        # C·L and C, the strides of a row and of a position, do not depend on R: read off the tensor, a
        # trace keeps them as constants and multiplies no traced sizes per call but R·C·L (where a
        # size is 1 its stride is free, and so is what a tensor of one row reports there)
        image, column = x.stride(2), x.stride(3)
        rows = x.as_strided((R, C, 1, L), (image, 1, image, column))  # (R, C, 1, L), canonical strides
        y = F.group_norm(rows, self.num_groups, self.weight, self.bias, self.eps)
        y = y.contiguous(memory_format=torch.channels_last)  # (a no-op: group_norm keeps the format)
        return y.as_strided((1, C, R, L), (R * image, 1, image, column))  # back to (1, C, R, L)


class Conv1dBlock(nn.Sequential):
    """Conv1d(kernel_size, 'same' padding) -> GroupNorm(n_groups) -> Mish, on (B, C, L) (or in the
    inference layout of `ConditionalUnet1d`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int = 8) -> None:
        super().__init__()
        # One child named `block` so state_dict keys read `...block.0.weight` as in the reference.
        self.block = nn.Sequential(
            Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            GroupNorm1d(n_groups, out_channels),
            nn.Mish(),
        )


class Downsample1d(nn.Module):
    """Halve the length: Conv1d(k=3, stride=2, padding=1), channels unchanged."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = Conv1d(dim, dim, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, L) -> (B, C, L // 2) (or in the inference layout, see `Conv1d`)."""
        return self.conv(x)


class Upsample1d(nn.Module):
    """Double the length: ConvTranspose1d(k=4, stride=2, padding=1), channels unchanged."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = ConvTranspose1d(dim, dim, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, L) -> (B, C, 2 * L) (or in the inference layout, see `Conv1d`)."""
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
            x: (B, C_in, L) features, or (1, C_in, B, L) in the inference layout.
            cond: (B, cond_dim) conditioning vector.

        Returns:
            (B, C_out, L) features (or (1, C_out, B, L)).
        """
        h = self.blocks[0](x)  # (B, C_out, L)
        film = self.cond_encoder(cond)  # (B, 2*C_out) or (B, C_out)
        # (B, 2*C_out, 1), or (1, 2*C_out, B, 1) in the inference layout: row b's on row b, over L
        film = film.t()[None, :, :, None] if x.dim() == 4 else film[:, :, None]
        if self.cond_predict_scale:
            scale, bias = film.unflatten(1, (2, self.out_channels)).unbind(1)  # 2 x (..., C_out, ...)
            h = torch.addcmul(bias, scale, h)  # scale * h + bias, (B, C_out, L)
        else:
            h = h + film  # (B, C_out, L)
        h = self.blocks[1](h)
        return h + self.residual_conv(x)


def _check_unet_shape(down_dims: tuple[int, ...], kernel_size: int, n_groups: int) -> None:
    """Refuse a U-Net shape its layers cannot build (ValueError naming the setting)."""
    if not down_dims:
        raise ValueError("down_dims must name at least one level")
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd to preserve the length, got {kernel_size}")
    if any(d % n_groups != 0 for d in down_dims):
        raise ValueError(f"n_groups={n_groups} must divide every width in down_dims={down_dims}")


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

    Inference layout: a CPU call in float32 without grad (`is_cpu_inference`; the samplers' calls)
    lays its B rows out as the height of one channels-last image, (1, C, B, L). Every convolution is a
    2-D convolution with a (1, k) kernel (PyTorch's CPU backend runs it with its channels-last im2col
    and matrix product, or with oneDNN, as it picks by size), and GroupNorm normalises each row on
    the (B, C, 1, L) view of the same memory (`GroupNorm1d`): the same function as the (B, C, L)
    layout, within float32 rounding, and cheaper per call on 2 CPU cores: at every row count for the
    shipped network (most at 1-8 rows), at 1-4 rows for the reference-size one (within 4 % at 8-50
    rows; docs/benchmarks.md, session 9). Training and other devices use the (B, C, L) layout.
    `DiffusionPolicy.set_compile("trace")` on the CPU runs this layout through oneDNN with prepacked
    weights instead (`runtime.cpu_graphs`).

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
        _check_unet_shape(down_dims, kernel_size, n_groups)
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
        inference_layout = is_cpu_inference(sample)  # a static fact: see the class docstring
        if inference_layout:  # (B, H, Da) -> (1, Da, B, H), channels last
            x = sample.permute(2, 0, 1).unsqueeze(0).contiguous(memory_format=torch.channels_last)
        else:
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
        if inference_layout:
            return x[0].permute(1, 2, 0)  # (1, Da, B, H) -> (B, H, Da)
        return x.transpose(1, 2)  # (B, Da, H) -> (B, H, Da)
