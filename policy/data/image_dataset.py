"""PushT image training windows (``pixels_agent_pos`` policies) over a demonstration store with ``data/img``.

A sample is a window of `horizon` steps of one episode, with the same windows, padding and split as
`PushTLowdimDataset` (whose machinery this reuses)::

    pixels     (To, 96, 96, 3)  uint8    data/img of the first To rows (the only rows the policy encodes)
    agent_pos  (H, 2)           float32  data/state[:, :2]
    action     (H, 2)           float32

Images stay uint8 (4x smaller than DP's float32 ``data/img``); the policy scales them to [0, 1] and
normalises them per channel (mean 0.5, std 0.5 by default: [-1, 1], DP's rule) in
`VisionUnet.encode`, so training and inference share one image path. The min-max normaliser covers
``obs`` (= agent_pos) and ``action``.

`make_dataset` picks the dataset class for a `PolicyConfig`. No hydra.
"""

from __future__ import annotations

import os
from typing import Literal

import numpy as np
import torch

from parapolicy.policy.config import PolicyConfig
from parapolicy.policy.data.dataset import LOWDIM_KEYS, PushTLowdimDataset
from parapolicy.policy.data.replay_store import DatasetError, ReplayStore

IMAGE_KEY = "img"


class PushTImageDataset(PushTLowdimDataset):
    """Windows of (pixels, agent_pos, action) for image policies; arguments as `PushTLowdimDataset`.

    Raises:
        DatasetError: the store has no ``data/img`` (collect with ``record_images=true``) or images of
            another shape than ``image_shape`` (H, W, C).
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
        image_shape: tuple[int, int, int] = (96, 96, 3),
    ) -> None:
        own = not isinstance(store_or_path, ReplayStore)
        store = ReplayStore.open(store_or_path, keys=LOWDIM_KEYS) if own else store_or_path
        try:
            if IMAGE_KEY not in store:
                raise DatasetError(
                    f"{store.path}: no data/{IMAGE_KEY}; collect images with "
                    "parapolicy-collect record_images=true"
                )
            pixels = store.array(IMAGE_KEY)
            super().__init__(
                store, horizon, n_obs_steps, n_action_steps, val_ratio, max_train_episodes, seed, split
            )
            state = store.array("state")
        finally:
            if own:
                store.close()
        if pixels.dtype != np.uint8 or tuple(pixels.shape[1:]) != tuple(image_shape):
            raise DatasetError(
                f"data/{IMAGE_KEY} must be uint8 {tuple(image_shape)} frames, "
                f"got {pixels.dtype} {pixels.shape[1:]}"
            )
        self._pixels = pixels  # (N, H, W, C) uint8
        # the low-dim observation of an image policy is the agent position: the inherited
        # get_normalizer fits ``obs`` (2) and ``action`` (2) on it
        self._obs = np.ascontiguousarray(state[:, :2], dtype=np.float32)  # (N, 2)

    def get_batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """Windows ``idx``: ``pixels`` (B, To, H, W, C) uint8, ``agent_pos`` / ``action`` (B, H, 2)."""
        rows = self.indices[np.asarray(idx, dtype=np.int64)]  # (B, H)
        return {
            "pixels": torch.from_numpy(self._pixels[rows[:, : self.n_obs_steps]]),
            "agent_pos": torch.from_numpy(self._obs[rows]),
            "action": torch.from_numpy(self._action[rows]),
        }

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        """Window ``idx`` (as `get_batch`, without the batch axis)."""
        return {k: v[0] for k, v in self.get_batch(np.array([idx])).items()}


def make_dataset(
    policy: PolicyConfig,
    store_or_path: ReplayStore | str | os.PathLike[str],
    val_ratio: float = 0.02,
    max_train_episodes: int | None = None,
    seed: int = 42,
    split: Literal["train", "val"] = "train",
) -> PushTLowdimDataset:
    """The training dataset of ``policy``: keypoint windows for ``state``, image windows for
    ``pixels_agent_pos``.

    Raises:
        DatasetError: the store lacks what the policy needs, or its observations are not
            ``policy.obs_dim`` wide (an image policy takes the 2-d agent_pos, a low-dim one 20-d).
    """
    args = (
        policy.horizon,
        policy.n_obs_steps,
        policy.n_action_steps,
        val_ratio,
        max_train_episodes,
        seed,
        split,
    )
    if policy.obs_type == "pixels_agent_pos":
        C, H, W = policy.vision.image_shape
        dataset: PushTLowdimDataset = PushTImageDataset(store_or_path, *args, image_shape=(H, W, C))
    else:
        dataset = PushTLowdimDataset(store_or_path, *args)
    data_dim = dataset.obs_dim
    if data_dim != policy.obs_dim:
        what = "agent_pos" if policy.obs_type == "pixels_agent_pos" else "keypoints + agent_pos"
        raise DatasetError(
            f"policy.obs_dim={policy.obs_dim} but the {policy.obs_type!r} observations of this store are "
            f"{data_dim}-d ({what}): set policy.obs_dim={data_dim}"
        )
    return dataset
