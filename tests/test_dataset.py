"""Tests for policy/data/dataset.py: window indices and edge padding, splits, the train cap, samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from parapolicy.policy.data.dataset import (
    OBS_DIM,
    PushTLowdimDataset,
    downsample_mask,
    make_val_mask,
    make_window_indices,
    obs_from_arrays,
)
from parapolicy.policy.data.replay_store import DatasetError, ReplayStore


def make_episode(length: int, first_row: int) -> dict[str, np.ndarray]:
    """Values encode the global row: state[:, 0] == row, action[:, 0] == 1000 + row, keypoints row + k/100."""
    rows = np.arange(first_row, first_row + length, dtype=np.float64)  # (L,)
    return {
        "state": np.stack([rows, rows + 0.5, rows * 0, rows * 0, rows * 0], axis=1),  # (L, 5)
        "action": np.stack([1000 + rows, -rows], axis=1),  # (L, 2)
        "keypoint": rows[:, None, None] + np.arange(18).reshape(9, 2) / 100.0,  # (L, 9, 2)
    }


def write_store(path: Path, lengths: list[int]) -> Path:
    store = ReplayStore.create(path)
    first = 0
    for i, length in enumerate(lengths):
        store.append_episode(make_episode(length, first), seed=i)
        first += length
    return path


LENGTHS = [20, 8, 7, 3, 16, 30, 12, 9, 25, 11]


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return write_store(tmp_path / "demo.zarr", LENGTHS)


# ----------------------------------------------------------------------------------------- window indices


def test_window_count_and_edge_padding_defaults() -> None:
    # One episode of L = 20 at rows [30, 50): L - 7 = 13 windows with pad_before 1 / pad_after 7.
    idx = make_window_indices([30, 50], horizon=16, pad_before=1, pad_after=7, episode_mask=[False, True])
    assert idx.shape == (13, 16) and idx.dtype == np.int64
    np.testing.assert_array_equal(idx[0], [30, 30, *range(31, 45)])  # starts at -1: first row repeated
    np.testing.assert_array_equal(idx[1], range(30, 46))
    np.testing.assert_array_equal(idx[-1], [*range(41, 50), *[49] * 7])  # start L-16+7=11: last row x8
    assert idx.min() == 30 and idx.max() == 49


@pytest.mark.parametrize("length", range(1, 41))
def test_window_count_formula(length: int) -> None:
    idx = make_window_indices([length], horizon=16, pad_before=1, pad_after=7)
    assert len(idx) == max(0, length - 7)  # the reference's L - 7, and none for L <= 7
    for pb, pa in [(0, 0), (3, 2), (15, 15), (0, 15)]:
        n = len(make_window_indices([length], horizon=16, pad_before=pb, pad_after=pa))
        # starts run over -pb .. L - 16 + pa inclusive
        assert n == max(0, (length - 16 + pa) - (-pb) + 1)


def test_short_episodes_exact_padding() -> None:
    # L = 8: exactly one window, start -1, which runs 8 rows past the end.
    (window,) = make_window_indices([8], horizon=16, pad_before=1, pad_after=7)
    np.testing.assert_array_equal(window, [0, 0, 1, 2, 3, 4, 5, 6, 7, 7, 7, 7, 7, 7, 7, 7])
    # L = 3 with large pads: padding on both sides of the same window.
    idx = make_window_indices([10, 13], horizon=6, pad_before=2, pad_after=4, episode_mask=[False, True])
    assert len(idx) == 3 - 6 + 2 + 4 + 1
    # starts -2, -1, 0, 1 (= L - H + pad_after)
    expected = [
        [10, 10, 10, 11, 12, 12],
        [10, 10, 11, 12, 12, 12],
        [10, 11, 12, 12, 12, 12],
        [11, 12, 12, 12, 12, 12],
    ]
    np.testing.assert_array_equal(idx, expected)


def test_windows_stay_inside_their_episode() -> None:
    ends = np.cumsum(LENGTHS)
    idx = make_window_indices(ends, horizon=16, pad_before=1, pad_after=7)
    assert len(idx) == sum(max(0, n - 7) for n in LENGTHS)
    episode = np.searchsorted(ends, idx, side="right")  # (W, H)
    assert (episode == episode[:, :1]).all()


def test_window_argument_checks() -> None:
    with pytest.raises(ValueError, match="pad_after"):
        make_window_indices([10], horizon=4, pad_before=0, pad_after=4)
    with pytest.raises(ValueError, match="pad_before"):
        make_window_indices([10], horizon=4, pad_before=-1)
    with pytest.raises(ValueError, match="episode_mask"):
        make_window_indices([10, 20], horizon=4, episode_mask=[True])
    assert make_window_indices([], horizon=4).shape == (0, 4)


# ------------------------------------------------------------------------------------------------ splits


def test_val_mask_counts_and_seeding() -> None:
    mask = make_val_mask(206, 0.02, seed=42)
    assert mask.sum() == 4  # round(206 * 0.02), as the reference
    np.testing.assert_array_equal(mask, make_val_mask(206, 0.02, seed=42))
    assert not np.array_equal(mask, make_val_mask(206, 0.02, seed=43))
    assert make_val_mask(10, 0.02, seed=0).sum() == 1  # at least one
    assert make_val_mask(2, 0.9, seed=0).sum() == 1  # at most E - 1
    assert make_val_mask(1, 0.5, seed=0).sum() == 0
    assert make_val_mask(10, 0.0, seed=0).sum() == 0
    assert make_val_mask(10, 0.19, seed=0).sum() == 2  # round(1.9), not int(1.9)
    # golden episodes (numpy's default_rng choice, as the reference draws them): a changed seed or draw shows
    assert np.flatnonzero(make_val_mask(10, 0.3, seed=0)).tolist() == [5, 6, 9]
    assert np.flatnonzero(downsample_mask(~make_val_mask(10, 0.3, seed=0), 4, seed=3)).tolist() == [
        0,
        1,
        3,
        8,
    ]
    train = downsample_mask(~mask, 90, seed=42)
    assert train.sum() == 90 and not (train & mask).any()
    np.testing.assert_array_equal(train, downsample_mask(~mask, 90, seed=42))
    np.testing.assert_array_equal(downsample_mask(~mask, None), ~mask)


def test_split_disjoint_covering_and_seeded(store_path: Path) -> None:
    train = PushTLowdimDataset(store_path, val_ratio=0.3, seed=1)
    val = PushTLowdimDataset(store_path, val_ratio=0.3, seed=1, split="val")
    assert val.episode_mask.sum() == 3 and train.episode_mask.sum() == 7
    assert not (train.episode_mask & val.episode_mask).any()
    assert (train.episode_mask | val.episode_mask).all()
    train_rows = set(np.unique(train.indices)) if len(train) else set()
    val_rows = set(np.unique(val.indices)) if len(val) else set()
    assert not train_rows & val_rows
    again = PushTLowdimDataset(store_path, val_ratio=0.3, seed=1, split="val")
    np.testing.assert_array_equal(again.episode_mask, val.episode_mask)
    masks = {tuple(PushTLowdimDataset(store_path, val_ratio=0.3, seed=s).val_mask) for s in range(6)}
    assert len(masks) > 1  # a different seed gives a different split
    derived = train.get_validation_dataset()
    np.testing.assert_array_equal(derived.indices, val.indices)
    assert len(train) == sum(max(0, n - 7) for n, m in zip(LENGTHS, train.episode_mask, strict=True) if m)


def test_train_cap(store_path: Path) -> None:
    full = PushTLowdimDataset(store_path, val_ratio=0.2, seed=3)
    capped = PushTLowdimDataset(store_path, val_ratio=0.2, seed=3, max_train_episodes=4)
    assert capped.train_mask.sum() == 4
    assert not (capped.train_mask & capped.val_mask).any()
    assert (capped.train_mask <= full.train_mask).all()  # a subset of the uncapped training episodes
    np.testing.assert_array_equal(capped.val_mask, full.val_mask)  # the cap does not touch validation
    again = PushTLowdimDataset(store_path, val_ratio=0.2, seed=3, max_train_episodes=4)
    np.testing.assert_array_equal(again.train_mask, capped.train_mask)
    val = PushTLowdimDataset(store_path, val_ratio=0.2, seed=3, max_train_episodes=4, split="val")
    np.testing.assert_array_equal(val.episode_mask, full.val_mask)  # capped-out episodes are not val
    assert PushTLowdimDataset(store_path, max_train_episodes=100).train_mask.sum() == 9
    assert np.flatnonzero(capped.val_mask).tolist() == [0, 7]  # golden: the cap is drawn with `seed`
    assert np.flatnonzero(capped.train_mask).tolist() == [1, 2, 5, 9]


def test_the_fingerprint_sees_one_changed_action_or_observation(tmp_path: Path) -> None:
    base = PushTLowdimDataset(write_store(tmp_path / "a.zarr", LENGTHS)).fingerprint()
    assert PushTLowdimDataset(write_store(tmp_path / "b.zarr", LENGTHS)).fingerprint() == base
    for key in ("action", "state"):
        store = ReplayStore.create(tmp_path / f"{key}.zarr")
        first = 0
        for i, length in enumerate(LENGTHS):
            episode = make_episode(length, first)
            if i == 3:
                episode[key][1, 0] += 1.0  # one value of one step
            store.append_episode(episode, seed=i)
            first += length
        changed = PushTLowdimDataset(tmp_path / f"{key}.zarr").fingerprint()
        assert changed["n_steps"] == base["n_steps"] and changed["sha256"] != base["sha256"], key


# ----------------------------------------------------------------------------------------------- samples


def test_samples_have_reference_layout_and_edge_padding(store_path: Path) -> None:
    ds = PushTLowdimDataset(store_path, val_ratio=0.0)
    assert len(ds) == sum(max(0, n - 7) for n in LENGTHS)
    sample = ds[0]  # episode 0 (rows 0..19), window start -1
    assert sample["obs"].shape == (16, OBS_DIM) and sample["action"].shape == (16, 2)
    assert sample["obs"].dtype == torch.float32 and sample["action"].dtype == torch.float32
    rows = torch.tensor([0, 0, *range(1, 15)], dtype=torch.float32)
    torch.testing.assert_close(sample["obs"][:, 0], rows)  # keypoint 0 x == row
    torch.testing.assert_close(sample["obs"][:, 17], rows + 0.17)  # keypoint 8 y
    torch.testing.assert_close(sample["obs"][:, 18], rows)  # agent x == state[:, 0]
    torch.testing.assert_close(sample["obs"][:, 19], rows + 0.5)  # agent y == state[:, 1]
    torch.testing.assert_close(sample["action"][:, 0], 1000 + rows)
    last = ds[12]  # episode 0's last window: rows 11..19 then row 19 repeated
    rows = torch.tensor([*range(11, 20), *[19] * 7], dtype=torch.float32)
    torch.testing.assert_close(last["action"][:, 0], 1000 + rows)
    torch.testing.assert_close(last["obs"][:, 18], rows)
    # Episode 1 (L = 8, rows 20..27) gives exactly one window, padded on both sides.
    one = ds[13]
    rows = torch.tensor([20, 20, *range(21, 28), *[27] * 7], dtype=torch.float32)
    torch.testing.assert_close(one["action"][:, 0], 1000 + rows)
    batch = next(iter(DataLoader(ds, batch_size=5, shuffle=False)))
    assert batch["obs"].shape == (5, 16, OBS_DIM) and batch["action"].shape == (5, 16, 2)


def test_obs_from_arrays_layout_numpy_and_torch() -> None:
    rng = np.random.default_rng(0)
    keypoint = rng.normal(size=(4, 3, 9, 2))
    state = rng.normal(size=(4, 3, 5))
    obs = obs_from_arrays(keypoint, state)
    assert obs.shape == (4, 3, 20) and obs.dtype == np.float32
    np.testing.assert_allclose(obs[..., :18], keypoint.reshape(4, 3, 18), rtol=1e-6)
    np.testing.assert_allclose(obs[..., 18:], state[..., :2], rtol=1e-6)
    obs_t = obs_from_arrays(torch.from_numpy(keypoint), torch.from_numpy(state))
    assert isinstance(obs_t, torch.Tensor) and obs_t.dtype == torch.float32
    np.testing.assert_array_equal(obs_t.numpy(), obs)
    assert obs_from_arrays(keypoint[0, 0], state[0, 0, :2]).shape == (20,)
    with pytest.raises(ValueError, match="keypoint"):
        obs_from_arrays(np.zeros((3, 8, 2)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="leading"):
        obs_from_arrays(np.zeros((3, 9, 2)), np.zeros((4, 5)))


def test_normalizer_fitted_on_whole_store(store_path: Path) -> None:
    ds = PushTLowdimDataset(store_path, val_ratio=0.3, seed=0, max_train_episodes=2)
    norm = ds.get_normalizer()
    store = ReplayStore.open(store_path, keys=("state", "keypoint", "action"))
    obs = obs_from_arrays(store.array("keypoint"), store.array("state"))
    np.testing.assert_allclose(norm.get_stats("obs")["min"].numpy(), obs.min(axis=0))
    np.testing.assert_allclose(norm.get_stats("action")["max"].numpy(), store.array("action").max(axis=0))
    x = norm.normalize("action", torch.from_numpy(store.array("action")))
    assert x.min() >= -1 - 1e-6 and x.max() <= 1 + 1e-6


def test_dataset_from_store_object_and_argument_checks(store_path: Path, tmp_path: Path) -> None:
    store = ReplayStore.open(store_path, keys=("state", "action", "keypoint"))
    ds = PushTLowdimDataset(store, val_ratio=0.0)
    torch.testing.assert_close(ds[5]["obs"], PushTLowdimDataset(store_path, val_ratio=0.0)[5]["obs"])
    with pytest.raises(ValueError, match="n_action_steps"):
        PushTLowdimDataset(store_path, horizon=8, n_obs_steps=2, n_action_steps=8)
    with pytest.raises(ValueError, match="split"):
        PushTLowdimDataset(store_path, split="test")  # type: ignore[arg-type]
    # A store without keypoints cannot feed the low-dim dataset.
    bare = ReplayStore.create(tmp_path / "bare.zarr")
    bare.append_episode({"state": np.zeros((9, 5)), "action": np.zeros((9, 2))}, seed=0)
    with pytest.raises(DatasetError, match="data/keypoint"):
        PushTLowdimDataset(tmp_path / "bare.zarr")
    with pytest.raises(DatasetError, match="data/keypoint"):
        PushTLowdimDataset(bare)
    ReplayStore.create(tmp_path / "empty.zarr")  # a store nothing was appended to: named, not indexed
    with pytest.raises(DatasetError, match=r"empty\.zarr: missing required key\(s\) data/state"):
        PushTLowdimDataset(tmp_path / "empty.zarr")
