"""A test-only restatement of LeRobot's diffusion U-Net module tree (names and forward), written from
LeRobot's modeling_diffusion.py structure: residual blocks with ``conv1`` / ``conv2``, bare Conv1d /
ConvTranspose1d down/up-sampling, a final Conv1dBlock of 8 groups, and per-step [state, env] or
[state, image] conditioning. It gives hand-built checkpoints LeRobot's exact key names and an
independent forward to compare with, without importing lerobot."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Conv1dBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int, groups: int = 8) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(c_in, c_out, k, padding=k // 2), nn.GroupNorm(groups, c_out), nn.Mish()
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, cond_dim: int, k: int, groups: int, scale: bool) -> None:
        super().__init__()
        self.scale, self.c_out = scale, c_out
        self.conv1 = Conv1dBlock(c_in, c_out, k, groups)
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out if scale else c_out))
        self.conv2 = Conv1dBlock(c_out, c_out, k, groups)
        self.residual_conv = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        out = self.conv1(x)
        emb = self.cond_encoder(cond).unsqueeze(-1)
        out = emb[:, : self.c_out] * out + emb[:, self.c_out :] if self.scale else out + emb
        return self.conv2(out) + self.residual_conv(x)


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        half = self.dim // 2
        emb = torch.exp(torch.arange(half) * -(math.log(10000) / (half - 1)))
        emb = x.float().unsqueeze(-1) * emb.unsqueeze(0)
        return torch.cat((emb.sin(), emb.cos()), dim=-1)


class LeRobotUnet(nn.Module):
    """LeRobot's DiffusionConditionalUnet1d layout (names under ``diffusion.unet.``)."""

    def __init__(self, action_dim: int, cond: int, dsed: int, down_dims, k: int = 5, groups: int = 8) -> None:
        super().__init__()
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(dsed), nn.Linear(dsed, 4 * dsed), nn.Mish(), nn.Linear(4 * dsed, dsed)
        )
        cd = dsed + cond
        in_out = [(action_dim, down_dims[0]), *zip(down_dims[:-1], down_dims[1:], strict=True)]
        self.down_modules = nn.ModuleList(
            nn.ModuleList(
                [
                    ResBlock(a, b, cd, k, groups, True),
                    ResBlock(b, b, cd, k, groups, True),
                    nn.Conv1d(b, b, 3, 2, 1) if i < len(in_out) - 1 else nn.Identity(),
                ]
            )
            for i, (a, b) in enumerate(in_out)
        )
        mid = down_dims[-1]
        self.mid_modules = nn.ModuleList([ResBlock(mid, mid, cd, k, groups, True) for _ in range(2)])
        self.up_modules = nn.ModuleList(
            nn.ModuleList(
                [
                    ResBlock(2 * b, a, cd, k, groups, True),
                    ResBlock(a, a, cd, k, groups, True),
                    nn.ConvTranspose1d(a, a, 4, 2, 1),
                ]
            )
            for a, b in reversed(in_out[1:])
        )
        self.final_conv = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], k), nn.Conv1d(down_dims[0], action_dim, 1)
        )

    def forward(self, x: Tensor, t: Tensor, global_cond: Tensor) -> Tensor:
        x = x.transpose(1, 2)
        cond = torch.cat([self.diffusion_step_encoder(t), global_cond], dim=-1)
        skips = []
        for r1, r2, down in self.down_modules:
            x = r2(r1(x, cond), cond)
            skips.append(x)
            x = down(x)
        for m in self.mid_modules:
            x = m(x, cond)
        for r1, r2, up in self.up_modules:
            x = torch.cat((x, skips.pop()), dim=1)
            x = up(r2(r1(x, cond), cond))
        return self.final_conv(x).transpose(1, 2)


def lerobot_config(**overrides) -> dict:
    """A config.json as LeRobot 0.4 writes it for a diffusion policy (draccus dump of DiffusionConfig)."""
    cfg = {
        "type": "diffusion",
        "n_obs_steps": 2,
        "normalization_mapping": {"VISUAL": "MEAN_STD", "STATE": "MIN_MAX", "ACTION": "MIN_MAX"},
        "input_features": {
            "observation.image": {"type": "VISUAL", "shape": [3, 96, 96]},
            "observation.state": {"type": "STATE", "shape": [2]},
        },
        "output_features": {"action": {"type": "ACTION", "shape": [2]}},
        "device": "cpu",
        "use_amp": False,
        "push_to_hub": True,
        "repo_id": None,
        "private": None,
        "tags": None,
        "license": None,
        "horizon": 16,
        "n_action_steps": 8,
        "drop_n_last_frames": 7,
        "vision_backbone": "resnet18",
        "crop_shape": [84, 84],
        "crop_is_random": True,
        "pretrained_backbone_weights": None,
        "use_group_norm": True,
        "spatial_softmax_num_keypoints": 32,
        "use_separate_rgb_encoder_per_camera": False,
        "down_dims": [16, 32],
        "kernel_size": 5,
        "n_groups": 8,
        "diffusion_step_embed_dim": 16,
        "use_film_scale_modulation": True,
        "noise_scheduler_type": "DDPM",
        "num_train_timesteps": 100,
        "beta_schedule": "squaredcos_cap_v2",
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "prediction_type": "epsilon",
        "clip_sample": True,
        "clip_sample_range": 1.0,
        "num_inference_steps": None,
        "do_mask_loss_for_padding": False,
        "optimizer_lr": 0.0001,
        "optimizer_betas": [0.95, 0.999],
        "optimizer_eps": 1e-08,
        "optimizer_weight_decay": 1e-06,
        "scheduler_name": "cosine",
        "scheduler_warmup_steps": 500,
    }
    cfg.update(overrides)
    return cfg
