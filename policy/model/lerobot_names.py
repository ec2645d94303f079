"""LeRobot diffusion weight names <-> this project's, and the exact FiLM column permutation of low-dim
policies (LeRobot conditions per step on [state, env], this project on [env, state]). No hydra."""

from __future__ import annotations

import torch

from parapolicy.policy.config import PolicyConfig


def lerobot_to_ours(name: str, image: bool, separate_encoder: bool) -> str | None:
    """Our network key for a LeRobot ``model.safetensors`` key (None: not a network weight)."""
    if name.startswith("diffusion.unet."):
        key = name[len("diffusion.unet.") :]
        key = key.replace(".conv1.", ".blocks.0.").replace(".conv2.", ".blocks.1.")
        parts = key.split(".")
        if parts[0] in ("down_modules", "up_modules") and parts[2] == "2":
            key = ".".join([*parts[:3], "conv", *parts[3:]])
        return f"unet.{key}" if image else key
    prefix = "diffusion.rgb_encoder.0." if separate_encoder else "diffusion.rgb_encoder."
    if image and name.startswith(prefix):
        return "rgb_encoder." + name[len(prefix) :]
    return None


def ours_to_lerobot(key: str, image: bool) -> str:
    """The LeRobot name of our network key (inverse of `lerobot_to_ours`, shared encoder)."""
    if image and key.startswith("rgb_encoder."):
        return "diffusion." + key
    if image:
        key = key[len("unet.") :]
    key = key.replace(".blocks.0.", ".conv1.").replace(".blocks.1.", ".conv2.")
    parts = key.split(".")
    if parts[0] in ("down_modules", "up_modules") and parts[2] == "2" and parts[3] == "conv":
        parts = [*parts[:3], *parts[4:]]
    return "diffusion.unet." + ".".join(parts)


def film_permutation(config: PolicyConfig, state_dim: int, to_ours: bool) -> torch.Tensor | None:
    """Column order turning LeRobot's per-step [state, env] FiLM inputs into ours [env, state] (or back).

    Returns None for image policies (same order on both sides).
    """
    if config.obs_type != "state":
        return None
    dsed, Do, To = config.unet.diffusion_step_embed_dim, config.obs_dim, config.n_obs_steps
    step = torch.cat((torch.arange(state_dim, Do), torch.arange(state_dim)))  # ours[j] = theirs[step[j]]
    if not to_ours:
        step = torch.argsort(step)  # theirs[j] = ours[inv[j]]
    cols = [torch.arange(dsed)] + [dsed + t * Do + step for t in range(To)]
    return torch.cat(cols)


def permute_film(weights: dict[str, torch.Tensor], perm: torch.Tensor | None) -> dict[str, torch.Tensor]:
    if perm is None:
        return weights
    return {
        k: (v[:, perm].contiguous() if k.endswith("cond_encoder.1.weight") else v) for k, v in weights.items()
    }
