"""PushT low-dim training windows over a demonstration store (reference: pusht.md section 2.2).

A sample is a window of `horizon` consecutive steps of one episode::

    obs     (H, 20)  float32   keypoint[t] (9 x 2 -> 18) then agent x, y = state[t, :2]
    action  (H, 2)   float32   commanded target at step t (obs[t] <-> action[t])

Windows start from `-pad_before` to `L - horizon + pad_after` inside an episode of length `L`, and
out-of-episode rows repeat the episode's first/last row (edge padding) for obs and action alike. With
`pad_before = n_obs_steps - 1` and `pad_after = n_action_steps - 1` (1 and 7 for the PushT defaults)
that is `L - 7` windows per episode of length `L >= 8`.

The train/validation split is by episode and seeded exactly like the reference's `get_val_mask` and
`downsample_mask`, so the same seed picks the same episodes from the same store. One deliberate
difference: the reference's validation set is "every episode not used for training", which also
holds the episodes dropped by `max_train_episodes`; here `split="val"` is only the held-out
validation episodes.

Reads the store through `policy.replay_store` (the only zarr user). No hydra.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from parapolicy.policy.config import check_action_steps
from parapolicy.policy.data.replay_store import DatasetError, ReplayStore
from parapolicy.policy.model.normalizer import MinMaxNormalizer

__all__ = [
    "ACTION_DIM",
    "LOWDIM_KEYS",
    "N_KEYPOINTS",
    "OBS_DIM",
    "PushTLowdimDataset",
    "check_split",
    "downsample_mask",
    "make_val_mask",
    "make_window_indices",
    "obs_from_arrays",
]

N_KEYPOINTS = 9
OBS_DIM = 2 * N_KEYPOINTS + 2  # 18 keypoint coordinates + agent x, y
ACTION_DIM = 2
LOWDIM_KEYS: tuple[str, ...] = ("state", "keypoint", "action")


def obs_from_arrays(keypoint: Any, state: Any) -> Any:
    """Build the 20-d low-dim observation: flattened keypoints, then the agent position.

    Args:
        keypoint: (..., 9, 2) block keypoints in world px (numpy array or torch tensor).
        state: (..., S) with S >= 2; only `state[..., :2]` (agent x, y) is used.

    Returns:
        (..., 20) float32, a numpy array or a torch tensor like `keypoint`:
        `[kp0x, kp0y, ..., kp8x, kp8y, agent_x, agent_y]`.

    Raises:
        ValueError: On mismatched shapes.
    """
    is_torch = isinstance(keypoint, torch.Tensor)
    if is_torch:
        state = torch.as_tensor(state, device=keypoint.device)
    else:
        keypoint, state = np.asarray(keypoint), np.asarray(state)
    if keypoint.ndim < 2 or tuple(keypoint.shape[-2:]) != (N_KEYPOINTS, 2):
        raise ValueError(f"keypoint must be (..., {N_KEYPOINTS}, 2), got {tuple(keypoint.shape)}")
    if state.ndim < 1 or state.shape[-1] < 2:
        raise ValueError(f"state must be (..., S) with S >= 2, got {tuple(state.shape)}")
    lead = tuple(keypoint.shape[:-2])
    if tuple(state.shape[:-1]) != lead:
        raise ValueError(
            f"keypoint {tuple(keypoint.shape)} and state {tuple(state.shape)} have different leading shapes"
        )
    flat = keypoint.reshape(*lead, 2 * N_KEYPOINTS)  # (..., 9, 2) -> (..., 18)
    if is_torch:
        return torch.cat([flat.to(torch.float32), state[..., :2].to(torch.float32)], dim=-1)  # (..., 20)
    return np.concatenate([flat, state[..., :2]], axis=-1).astype(np.float32, copy=False)  # (..., 20)


def make_window_indices(
    episode_ends: Sequence[int] | np.ndarray,
    horizon: int,
    pad_before: int = 0,
    pad_after: int = 0,
    episode_mask: Sequence[bool] | np.ndarray | None = None,
) -> np.ndarray:
    """Row indices of every training window, with edge padding folded in.

    For an episode occupying rows `[s, e)` (length `L = e - s`), window starts `k` run over
    `-pad_before ... L - horizon + pad_after` (inclusive), i.e.
    `max(0, L - horizon + pad_before + pad_after + 1)` windows; episodes shorter than
    `horizon - pad_before - pad_after` give none. Window `k` reads rows
    `clip(s + k + j, s, e - 1)` for `j = 0 ... horizon - 1`, so steps before the episode repeat its
    first row and steps after it repeat its last row.

    Args:
        episode_ends: (E,) cumulative exclusive episode ends.
        horizon: Window length `H` (>= 1).
        pad_before: Steps a window may start before the episode (0 ... H - 1).
        pad_after: Steps a window may run past the episode end (0 ... H - 1).
        episode_mask: (E,) bool, episodes to draw windows from; default all.

    Returns:
        (W, H) int64 buffer row indices, episodes in order, windows in start order.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    for name, pad in (("pad_before", pad_before), ("pad_after", pad_after)):
        if not 0 <= pad <= horizon - 1:
            raise ValueError(f"{name} must be in [0, horizon - 1] = [0, {horizon - 1}], got {pad}")
    ends = np.asarray(episode_ends, dtype=np.int64)  # (E,)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)  # (E,)
    mask = np.ones(ends.shape, dtype=bool) if episode_mask is None else np.asarray(episode_mask, dtype=bool)
    if mask.shape != ends.shape:
        raise ValueError(f"episode_mask has shape {mask.shape}, expected {ends.shape}")
    offsets = np.arange(horizon, dtype=np.int64)  # (H,)
    blocks = []
    for s, e in zip(starts[mask], ends[mask], strict=True):
        first = s - pad_before
        last = e - horizon + pad_after  # inclusive
        if last < first:
            continue
        window_starts = np.arange(first, last + 1, dtype=np.int64)  # (w,)
        blocks.append(np.clip(window_starts[:, None] + offsets[None, :], s, e - 1))  # (w, H)
    if not blocks:
        return np.zeros((0, horizon), dtype=np.int64)
    return np.concatenate(blocks)


def check_split(val_ratio: float, max_train_episodes: int | None) -> None:
    """Refuse split settings no store can satisfy (the dataset's and `TrainConfig`'s check).

    Raises:
        ValueError: ``val_ratio`` outside [0, 1), or ``max_train_episodes`` below 1.
    """
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    if max_train_episodes is not None and max_train_episodes < 1:
        raise ValueError(f"max_train_episodes must be >= 1 or None, got {max_train_episodes}")


def make_val_mask(n_episodes: int, val_ratio: float, seed: int = 0) -> np.ndarray:
    """Seeded episode-level validation mask, as the reference's `get_val_mask`.

    `round(n_episodes * val_ratio)` episodes (Python rounding), at least 1 and at most
    `n_episodes - 1`, drawn without replacement by `numpy.random.default_rng(seed)`; none when
    `val_ratio <= 0` (and so none when `n_episodes == 1`).

    Returns:
        (E,) bool, True for validation episodes.
    """
    val_mask = np.zeros(n_episodes, dtype=bool)
    if val_ratio <= 0 or n_episodes < 2:
        return val_mask
    n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    rng = np.random.default_rng(seed=seed)
    val_mask[rng.choice(n_episodes, size=n_val, replace=False)] = True
    return val_mask


def downsample_mask(mask: np.ndarray, max_n: int | None, seed: int = 0) -> np.ndarray:
    """Keep a seeded random subset of at most `max_n` of the True entries (reference `downsample_mask`).

    Returns:
        (E,) bool, a copy of `mask` when it has `max_n` True entries or fewer (or `max_n` is None).
    """
    mask = np.asarray(mask, dtype=bool)
    if max_n is None or int(mask.sum()) <= max_n:
        return mask.copy()
    chosen = np.flatnonzero(mask)
    rng = np.random.default_rng(seed=seed)
    keep = chosen[rng.choice(len(chosen), size=int(max_n), replace=False)]
    out = np.zeros_like(mask)
    out[keep] = True
    return out


class PushTLowdimDataset(Dataset):
    """Windows of (obs, action) for the low-dim PushT diffusion policy.

    Loads only `data/state`, `data/keypoint` and `data/action` into memory (then drops the store, so
    the dataset pickles cheaply into DataLoader workers).

    Args:
        store_or_path: A `ReplayStore`, or a path to one (format-3 directory, or the reference's
            format-2 directory or `.zip`).
        horizon: Window length `H` (16 in the reference).
        n_obs_steps: Observed steps `To`; `pad_before = To - 1`.
        n_action_steps: Executed steps `Ta`; `pad_after = Ta - 1`.
        val_ratio: Fraction of episodes held out for validation (0.02).
        max_train_episodes: Cap on training episodes (a seeded subset; the reference uses 90); None for all.
        seed: Seed of the split and of the cap (42).
        split: `"train"` or `"val"`.

    Attributes:
        episode_ends: (E,) int64 episode ends of the whole store.
        val_mask: (E,) bool, held-out validation episodes.
        train_mask: (E,) bool, training episodes (after the cap).
        episode_mask: (E,) bool, the episodes of this split.
        indices: (W, H) int64 buffer rows of each window.
    """

    def __init__(
        self,
        store_or_path: ReplayStore | str | os.PathLike[str],
        horizon: int = 16,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        val_ratio: float = 0.02,
        max_train_episodes: int | None = None,
        seed: int = 42,
        split: Literal["train", "val"] = "train",
    ) -> None:
        super().__init__()
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if horizon < 1 or n_obs_steps < 1 or n_action_steps < 1:
            raise ValueError(
                f"horizon, n_obs_steps and n_action_steps must be >= 1, got {horizon}, {n_obs_steps}, "
                f"{n_action_steps}"
            )
        check_action_steps(n_action_steps, horizon, n_obs_steps)
        check_split(val_ratio, max_train_episodes)

        if isinstance(store_or_path, ReplayStore):
            missing = [key for key in LOWDIM_KEYS if key not in store_or_path]
            if missing:
                raise DatasetError(
                    f"{store_or_path.path}: missing required key(s) "
                    f"{', '.join(f'data/{key}' for key in missing)} for the low-dim PushT dataset"
                )
            arrays = {key: store_or_path.array(key) for key in LOWDIM_KEYS}
            episode_ends = store_or_path.episode_ends
        else:
            with ReplayStore.open(store_or_path, keys=LOWDIM_KEYS) as store:
                arrays = {key: store.array(key) for key in LOWDIM_KEYS}
                episode_ends = store.episode_ends
        if episode_ends.size == 0:
            raise DatasetError("the demonstration store has no episodes")

        self.horizon = int(horizon)
        self.n_obs_steps = int(n_obs_steps)
        self.n_action_steps = int(n_action_steps)
        self.pad_before = self.n_obs_steps - 1
        self.pad_after = self.n_action_steps - 1
        self.split = split
        self.episode_ends = episode_ends
        self._obs = obs_from_arrays(arrays["keypoint"], arrays["state"])  # (N, 20)
        self._action = np.ascontiguousarray(arrays["action"], dtype=np.float32)  # (N, 2)

        n_episodes = int(episode_ends.size)
        self.val_mask = make_val_mask(n_episodes, val_ratio, seed=seed)
        self.train_mask = downsample_mask(~self.val_mask, max_train_episodes, seed=seed)
        self._set_split(split)

    def _set_split(self, split: Literal["train", "val"]) -> None:
        self.split = split
        self.episode_mask = self.train_mask if split == "train" else self.val_mask
        self.indices = make_window_indices(
            self.episode_ends, self.horizon, self.pad_before, self.pad_after, self.episode_mask
        )

    def fingerprint(self) -> dict[str, Any]:
        """What the data is: episode and step counts and a SHA-256 of the episode ends, observations and
        actions of the whole store (both splits), recorded in checkpoints to detect a changed store."""
        digest = hashlib.sha256()
        for array in (self.episode_ends.astype(np.int64), self._obs, self._action):
            digest.update(np.ascontiguousarray(array).data)
        return {
            "n_episodes": int(self.episode_ends.size),
            "n_steps": int(self.episode_ends[-1]),
            "sha256": digest.hexdigest(),
        }

    def get_validation_dataset(self) -> PushTLowdimDataset:
        """The `"val"` split of the same store and settings, sharing this dataset's arrays."""
        val = copy.copy(self)
        val._set_split("val")
        return val

    def get_normalizer(self) -> MinMaxNormalizer:
        """Min-max normaliser for `obs` (20) and `action` (2), fitted on every row of the store.

        As the reference, the statistics cover all episodes (validation and capped-out ones included).
        """
        return MinMaxNormalizer.from_data({"obs": self._obs, "action": self._action})

    @property
    def obs_dim(self) -> int:
        """Width Do of one observation step of this dataset's windows."""
        return int(self._obs.shape[1])

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def get_batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """Windows ``idx`` gathered at once: ``{"obs": (B, H, 20), "action": (B, H, 2)}`` float32."""
        rows = self.indices[np.asarray(idx, dtype=np.int64)]  # (B, H)
        return {"obs": torch.from_numpy(self._obs[rows]), "action": torch.from_numpy(self._action[rows])}

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        """Window `idx`: `{"obs": (H, 20), "action": (H, 2)}` float32 tensors."""
        rows = self.indices[idx]  # (H,)
        return {
            "obs": torch.from_numpy(self._obs[rows]),
            "action": torch.from_numpy(self._action[rows]),
        }

    def __repr__(self) -> str:
        return (
            f"PushTLowdimDataset(split={self.split!r}, episodes={int(self.episode_mask.sum())}/"
            f"{self.episode_ends.size}, windows={len(self)}, horizon={self.horizon}, "
            f"pad=({self.pad_before}, {self.pad_after}))"
        )
