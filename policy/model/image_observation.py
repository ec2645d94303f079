"""The observation boundary of ``pixels_agent_pos`` policies: keys, shapes, dtypes, finiteness.

An image observation is a mapping with

- ``"pixels"``: uint8 (H, W, C) images, exactly as `PushTEnv(obs_type="pixels_agent_pos")` renders them;
- ``"agent_pos"``: float (Do,) agent state (environment units),

with a leading To axis for histories and an optional leading batch axis. The environment's observation
dict can be passed unchanged. No hydra imports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from parapolicy.policy.config import PolicyConfig

PIXELS_KEY = "pixels"
STATE_KEY = "agent_pos"
IMAGE_KEYS = (PIXELS_KEY, STATE_KEY)


def _as_tensor(value: Any) -> Tensor:
    return value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))


def validate_image_observation(
    config: PolicyConfig,
    obs: Any,
    history: bool,
    device: torch.device,
    error: type[Exception],
    dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """Check an image observation and return ``{"pixels": uint8, "agent_pos": dtype}`` on ``device``.

    Args:
        config: the policy config (image shape, Do, To).
        obs: the observation mapping (see the module docstring).
        history: whether the arrays carry the To-step history axis.
        device: where the returned tensors go.
        error: the exception type raised (the policy's ``ObservationError``).
        dtype: the agent state's dtype (the policy's).

    Returns:
        ``pixels`` (B, [To,] H, W, C) uint8 and ``agent_pos`` (B, [To,] Do) in ``dtype``.

    Raises:
        error: naming the missing key, the expected and actual shape, a wrong dtype, or a non-finite
            agent state.
    """
    if not isinstance(obs, Mapping):
        raise error(f"observation must be a mapping with keys {list(IMAGE_KEYS)}, got {type(obs).__name__}")
    missing = [k for k in IMAGE_KEYS if k not in obs]
    if missing:
        raise error(f"observation is missing key(s) {missing} (got keys {sorted(obs)})")
    C, H, W = config.vision.image_shape
    lead = (config.n_obs_steps,) if history else ()
    tails = {PIXELS_KEY: (*lead, H, W, C), STATE_KEY: (*lead, config.obs_dim)}
    out: dict[str, Tensor] = {}
    batch = None
    for key, tail in tails.items():
        x = _as_tensor(obs[key])
        given = tuple(x.shape)
        if key == PIXELS_KEY and x.dtype != torch.uint8:
            raise error(f"observation {key!r} must be uint8 (H, W, C) images, got dtype {x.dtype}")
        if key == STATE_KEY and not x.is_floating_point():
            raise error(f"observation {key!r} must be floating point, got dtype {x.dtype}")
        if x.dim() == len(tail):
            x = x.unsqueeze(0)
        if x.dim() != len(tail) + 1 or tuple(x.shape[1:]) != tail or x.shape[0] < 1:
            want = f"{tail} or (B, {', '.join(map(str, tail))})"
            raise error(f"observation {key!r} must have shape {want}, got {given}")
        if batch is not None and x.shape[0] != batch:
            raise error(f"observation {key!r} has batch size {x.shape[0]}, {PIXELS_KEY!r} has {batch}")
        batch = x.shape[0]
        out[key] = x.to(device=device, dtype=torch.uint8 if key == PIXELS_KEY else dtype)
    finite = torch.isfinite(out[STATE_KEY])
    if not bool(finite.all()):
        bad = tuple(int(i) for i in (~finite).nonzero()[0])
        raise error(f"observation {STATE_KEY!r} has a non-finite value at index {bad}")
    return out


def stack_steps(steps: list[Any]) -> Any:
    """Stack per-step validated observations (tensors or dicts of tensors) along a new axis 1."""
    if isinstance(steps[0], Mapping):
        return {k: torch.stack([s[k] for s in steps], dim=1) for k in steps[0]}
    return torch.stack(steps, dim=1)


def batch_size(x_obs: Any) -> int:
    """The batch size of a validated observation (a tensor or a dict of tensors)."""
    if isinstance(x_obs, Mapping):
        return int(next(iter(x_obs.values())).shape[0])
    return int(x_obs.shape[0])


# ------------------------------------------------------------------------------------------------
# what a controller calls (the policy side of a rollout)


def env_obs_type(config: PolicyConfig) -> str:
    """The `PushTEnv` ``obs_type`` that feeds this policy: ``keypoints`` or ``pixels_agent_pos``."""
    return "pixels_agent_pos" if config.obs_type == "pixels_agent_pos" else "keypoints"


def env_observation(config: PolicyConfig, env_obs: Any) -> dict[str, Any]:
    """The policy observation of one environment observation (what a controller keeps per step).

    ``state`` policies take ``{"obs": (Do,) float32}`` (the keypoint env's observation);
    ``pixels_agent_pos`` policies take the env's ``{"pixels": (H, W, C) uint8, "agent_pos": (Do,)}``.
    """
    if config.obs_type == "pixels_agent_pos":
        return image_env_observation(env_obs)
    return {"obs": np.asarray(env_obs, dtype=np.float32)}


def image_env_observation(env_obs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{"pixels": (H, W, C) uint8, "agent_pos": (Do,) float32}`` of a ``pixels_agent_pos`` env observation
    (PushT-v0's or gym-pusht's; the arrays are the env's own, the agent state cast to float32)."""
    return {
        PIXELS_KEY: np.asarray(env_obs[PIXELS_KEY]),
        STATE_KEY: np.asarray(env_obs[STATE_KEY], np.float32),
    }


def history_observation(steps: Sequence[Any]) -> dict[str, np.ndarray]:
    """The To-step history observation of per-step observations (oldest first): each key (To, ...).

    A step is a policy observation mapping (``{"pixels", "agent_pos"}`` or ``{"obs"}``) or a bare
    low-dim (Do,) array (a `Task`'s ``state`` observation), which becomes ``{"obs": (To, Do)}``.
    """
    if not isinstance(steps[0], Mapping):
        return {"obs": np.stack([np.asarray(s) for s in steps])}
    return {k: np.stack([np.asarray(s[k]) for s in steps]) for k in steps[0]}


def batch_observations(histories: list[Any]) -> dict[str, Tensor]:
    """One batched observation from validated histories (`DiffusionPolicy.validate_observation` output,
    each with a leading batch axis): concatenated along the batch axis, ready for `predict_action_chunk`."""
    if isinstance(histories[0], Mapping):
        return {k: torch.cat([h[k] for h in histories]) for k in histories[0]}
    return {"obs": torch.cat(histories)}
