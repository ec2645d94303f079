"""The transformer denoiser of Diffusion Policy (Chi et al. 2023, "time-series diffusion transformer").

`TransformerDenoiser` has the signature of every denoiser here, ``(sample (B, H, Da), timestep (B,),
global_cond (B, To * C)) -> (B, H, Da)``, so the sequential and Picard samplers run it unchanged (an
image policy's `VisionUnet` wraps it like the U-Net; C is then state + image features). Inside,
the condition is split back into To observation tokens: the memory is [timestep token, To observation
tokens] plus learned positions, passed through a two-layer MLP (or a transformer encoder); the H noisy
action tokens, plus learned positions, go through a pre-norm transformer decoder against that memory,
then a LayerNorm and a linear head. With ``causal_attn`` an action token attends to itself and earlier
action tokens, and to the memory up to its own step (the timestep token and observations 0..i).

Module and parameter names follow real-stanford/diffusion_policy's ``TransformerForDiffusion`` in the
configuration its PushT policies use (time and observations as the decoder's memory), so its state dict
loads unrenamed (`diffusion_policy_format.py`); its encoder-only variant (time as an input token) and
observation inpainting are not built. The attention masks follow from the config and are not saved
here (Diffusion Policy saves them; its loader checks them against `causal_masks`).

Imports torch and the config leaf only: no hydra.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from parapolicy.policy.config import PolicyConfig
from parapolicy.policy.model.networks import SinusoidalPosEmb

__all__ = ["TransformerDenoiser", "causal_masks"]


def causal_masks(horizon: int, n_memory: int) -> tuple[Tensor, Tensor]:
    """Additive attention masks (0 allowed, -inf blocked) of the causal decoder.

    Returns:
        (H, H) self-attention mask (action token i sees tokens 0..i) and (H, S) memory mask (action
        token i sees memory tokens 0..i+1: the timestep token and observations 0..i).
    """
    allowed = torch.ones(horizon, horizon).triu().bool().T  # (H, H) lower triangle with the diagonal
    rows, cols = torch.meshgrid(torch.arange(horizon), torch.arange(n_memory), indexing="ij")
    allowed_memory = rows >= cols - 1  # (H, S)

    def additive(m: Tensor) -> Tensor:
        return torch.zeros(m.shape).masked_fill(~m, float("-inf"))

    return additive(allowed), additive(allowed_memory)


class TransformerDenoiser(nn.Module):
    """Noise (or x0) prediction by a transformer decoder over the action tokens (see the module doc).

    Args:
        config: the policy config (``network="transformer"``); its `TransformerConfig` sets the sizes.
            Each observation token is one step of the condition: the low-dim observation, or for an
            image policy the state and the image features (`VisionUnet` wraps this network).
    """

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        c = config.transformer
        H, To, E = config.horizon, config.n_obs_steps, c.n_emb
        self.n_obs_steps, self.token_dim = To, config.obs_step_dim  # C: Do, or state + image features
        n_memory = 1 + To  # the timestep token, then one token per observation step

        self.input_emb = nn.Linear(config.action_dim, E)
        self.pos_emb = nn.Parameter(torch.zeros(1, H, E))
        self.drop = nn.Dropout(c.p_drop_emb)
        self.time_emb = SinusoidalPosEmb(E)
        self.cond_obs_emb = nn.Linear(config.obs_step_dim, E)
        self.cond_pos_emb = nn.Parameter(torch.zeros(1, n_memory, E))
        if c.n_cond_layers > 0:
            self.encoder: nn.Module = nn.TransformerEncoder(
                nn.TransformerEncoderLayer(
                    E, c.n_head, 4 * E, c.p_drop_attn, "gelu", batch_first=True, norm_first=True
                ),
                num_layers=c.n_cond_layers,
                enable_nested_tensor=False,
            )
        else:
            self.encoder = nn.Sequential(nn.Linear(E, 4 * E), nn.Mish(), nn.Linear(4 * E, E))
        layer = nn.TransformerDecoderLayer(
            E, c.n_head, 4 * E, c.p_drop_attn, "gelu", batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, num_layers=c.n_layer)
        self.mask: Tensor | None
        self.memory_mask: Tensor | None
        if c.causal_attn:
            mask, memory_mask = causal_masks(H, n_memory)
            # derived from the config, so not saved (a Diffusion Policy checkpoint holds them: checked equal)
            self.register_buffer("mask", mask, persistent=False)  # (H, H)
            self.register_buffer("memory_mask", memory_mask, persistent=False)  # (H, 1 + To)
        else:
            self.mask = self.memory_mask = None
        self.ln_f = nn.LayerNorm(E)
        self.head = nn.Linear(E, config.action_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """The reference's initialisation: N(0, 0.02) linear, attention and position weights, zero
        biases, unit LayerNorms."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.MultiheadAttention):
                nn.init.normal_(m.in_proj_weight, std=0.02)
                nn.init.zeros_(m.in_proj_bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.pos_emb, std=0.02)
        nn.init.normal_(self.cond_pos_emb, std=0.02)

    def forward(self, sample: Tensor, timestep: Tensor, global_cond: Tensor) -> Tensor:
        """(B, H, Da) noisy actions, (B,) or 0-d timesteps, (B, To * C) condition -> (B, H, Da)."""
        B = sample.shape[0]
        t = timestep.reshape(-1).expand(B)  # (B,)
        obs = global_cond.reshape(B, self.n_obs_steps, self.token_dim)  # (B, To, C)
        memory = torch.cat((self.time_emb(t)[:, None], self.cond_obs_emb(obs)), dim=1)  # (B, 1 + To, E)
        memory = self.encoder(self.drop(memory + self.cond_pos_emb))  # (B, 1 + To, E)
        x = self.drop(self.input_emb(sample) + self.pos_emb)  # (B, H, E)
        x = self.decoder(tgt=x, memory=memory, tgt_mask=self.mask, memory_mask=self.memory_mask)
        return self.head(self.ln_f(x))  # (B, H, Da)
