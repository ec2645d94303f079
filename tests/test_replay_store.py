"""Tests for policy/data/replay_store.py: layout, appends, interrupted writes, validation, format-2 reads.

zarr is imported here only to build reference-layout (format 2) and deliberately broken stores, and to
inject faults; the library itself keeps every zarr call in `replay_store`.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from parapolicy.policy.data.dataset import PushTLowdimDataset
from parapolicy.policy.data.replay_store import (
    DatasetError,
    ReadOnlyStoreError,
    ReplayStore,
    StoreNotFoundError,
)


def make_episode(length: int, first_row: int = 0, img: bool = False) -> dict[str, np.ndarray]:
    """A synthetic episode whose values encode the global row index (so slices are checkable)."""
    rows = np.arange(first_row, first_row + length, dtype=np.float64)  # (L,)
    ep = {
        "state": rows[:, None] + np.arange(5) / 10.0,  # (L, 5)
        "action": rows[:, None] * 2.0 + np.arange(2),  # (L, 2)
        "keypoint": rows[:, None, None] + np.arange(18).reshape(9, 2) / 100.0,  # (L, 9, 2)
    }
    if img:
        ep["img"] = np.full((length, 96, 96, 3), first_row % 256, dtype=np.uint8)
    return ep


def write_store(path: Path, lengths: list[int], seeds: list[int | None] | None = None, **kw) -> ReplayStore:
    store = ReplayStore.create(path, env_version="parapolicy/PushT-v0", expert={"kind": "test"}, **kw)
    first = 0
    for i, length in enumerate(lengths):
        store.append_episode(make_episode(length, first), seed=None if seeds is None else seeds[i])
        first += length
    return store


def write_raw(
    path: Path, arrays: dict[str, np.ndarray], ends: np.ndarray | None, zarr_format: int = 3
) -> Path:
    """Write a store with zarr directly (no validation), in the reference layout."""
    group = zarr.open_group(path, mode="w", zarr_format=zarr_format)
    for key, value in arrays.items():
        group.create_array(f"data/{key}", data=value, chunks=(4, *value.shape[1:]))
    if ends is not None:
        group.create_array("meta/episode_ends", data=np.asarray(ends, dtype=np.int64))
    return path


def reference_arrays(lengths: list[int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    eps = [make_episode(n, int(sum(lengths[:i]))) for i, n in enumerate(lengths)]
    arrays = {k: np.concatenate([e[k] for e in eps]).astype(np.float32) for k in eps[0]}
    n = arrays["state"].shape[0]
    arrays["n_contacts"] = np.zeros((n, 1), dtype=np.float32)
    arrays["img"] = np.full((n, 96, 96, 3), 255.0, dtype=np.float32)  # the reference stores float32 images
    return arrays, np.cumsum(lengths).astype(np.int64)


def zip_dir(src: Path, dest: Path, prefix: str = "") -> Path:
    """Zip a store directory: at the archive root (zarr's .zarr.zip) or under `prefix` (pusht.zip)."""
    with zipfile.ZipFile(dest, "w") as zf:
        for root, _, files in os.walk(src):
            for name in files:
                full = Path(root) / name
                zf.write(full, prefix + full.relative_to(src).as_posix())
    return dest


# ------------------------------------------------------------------------------------------------ writing


def test_create_append_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "demo.zarr"
    write_store(path, [5, 7, 3], seeds=[10, None, 12], metadata={"note": "unit"})
    store = ReplayStore.open(path, keys=("state", "action", "keypoint"))
    assert store.zarr_format == 3 and not store.writable
    assert store.n_episodes == 3 and store.n_steps == 15
    np.testing.assert_array_equal(store.episode_ends, [5, 12, 15])
    np.testing.assert_array_equal(store.episode_lengths, [5, 7, 3])
    assert store.episode_seeds == [10, None, 12]
    assert store.episode_slice(1) == slice(5, 12) and store.episode_slice(-1) == slice(12, 15)
    assert store.env_version == "parapolicy/PushT-v0"
    assert store.expert == {"kind": "test"} and store.metadata == {"note": "unit"}
    ep = store.get_episode(1)
    expected = make_episode(7, 5)
    for key in ("state", "action", "keypoint"):
        assert ep[key].dtype == np.float32
        np.testing.assert_allclose(ep[key], expected[key], rtol=1e-6)
    assert store.array("state").shape == (15, 5)
    with pytest.raises(IndexError, match="episode index 3 out of range for 3 episodes"):
        store.episode_slice(3)

    # On-disk layout: format 3, chunked along time only, Blosc zstd.
    group = zarr.open_group(path, mode="r")
    assert group.metadata.zarr_format == 3
    for key, trailing in (("state", (5,)), ("action", (2,)), ("keypoint", (9, 2))):
        arr = group[f"data/{key}"]
        assert arr.chunks[1:] == trailing and arr.dtype == np.float32
        (codec,) = arr.compressors
        assert type(codec).__name__ == "BloscCodec" and codec.cname.value == "zstd"
    assert group["meta/episode_ends"].dtype == np.int64
    assert group.attrs["episode_seeds"] == [10, None, 12]


def test_append_to_existing_store(tmp_path: Path) -> None:
    path = tmp_path / "demo.zarr"
    write_store(path, [4, 6], seeds=[0, 1])
    store = ReplayStore.open(path, keys=("state",), mode="a")
    assert store.append_episode(make_episode(5, 10), seed=2) == 2
    # The loaded key's in-memory copy follows the append.
    assert store.array("state").shape == (15, 5) and store.n_steps == 15
    reopened = ReplayStore.open(path, keys=("state", "action", "keypoint"))
    np.testing.assert_array_equal(reopened.episode_ends, [4, 10, 15])
    assert reopened.episode_seeds == [0, 1, 2]
    np.testing.assert_allclose(reopened.get_episode(2)["action"], make_episode(5, 10)["action"])


def test_create_refuses_existing_path_and_zip(tmp_path: Path) -> None:
    path = tmp_path / "demo.zarr"
    write_store(path, [3])
    with pytest.raises(FileExistsError, match="already exists \\(pass overwrite=True"):
        ReplayStore.create(path)
    fresh = ReplayStore.create(path, overwrite=True)
    assert fresh.n_episodes == 0
    with pytest.raises(ReadOnlyStoreError, match="zip"):
        ReplayStore.create(tmp_path / "demo.zarr.zip")
    with pytest.raises(DatasetError, match="JSON"):
        ReplayStore.create(tmp_path / "other.zarr", metadata={"bad": object()})


NAN_AT_STEP_1 = np.zeros((3, 5))
NAN_AT_STEP_1[1, 2] = np.nan


@pytest.mark.parametrize(
    ("episode", "match"),
    [
        ({"state": np.zeros((3, 5)), "action": np.zeros((3, 2))}, r"missing \['keypoint'\]"),
        ({**make_episode(3), "extra": np.zeros((3, 1))}, r"extra \['extra'\]"),
        ({**make_episode(3), "action": np.zeros((3, 3))}, "per-step shape"),
        ({**make_episode(3), "action": np.zeros((2, 2))}, "unequal length"),
        ({k: v[:0] for k, v in make_episode(3).items()}, "empty episode"),
        ({**make_episode(3), "state": NAN_AT_STEP_1}, r"'state'.*non-finite.*step 1"),
        ({**make_episode(3), "action": np.full((3, 2), np.inf)}, "'action'.*non-finite"),
    ],
)
def test_append_rejects_bad_episode_and_writes_nothing(tmp_path: Path, episode: dict, match: str) -> None:
    path = tmp_path / "demo.zarr"
    store = write_store(path, [4])
    with pytest.raises(DatasetError, match=match):
        store.append_episode(episode, seed=1)
    reopened = ReplayStore.open(path)
    assert reopened.n_episodes == 1 and reopened.n_steps == 4 and reopened.n_uncommitted_rows == 0


def test_integers_outside_the_stored_dtype_are_refused_not_wrapped(tmp_path: Path) -> None:
    path = tmp_path / "demo.zarr"
    store = ReplayStore.create(path)
    store.append_episode({**make_episode(2), "tick": np.array([[0], [1]], dtype=np.int16)}, seed=0)
    fits = {**make_episode(2, 2), "tick": np.array([[2], [3]], dtype=np.int64)}  # int64 values an int16 holds
    store.append_episode(fits, seed=1)
    wide = {**make_episode(2, 4), "tick": np.array([[40000], [70000]], dtype=np.int64)}
    with pytest.raises(
        DatasetError, match=r"'tick' holds values 40000\.\.70000, outside the store's int16 range"
    ):
        store.append_episode(wide, seed=2)
    low = {**make_episode(2, 4), "tick": np.array([[-40000], [0]], dtype=np.int64)}  # below int16's min
    with pytest.raises(DatasetError, match=r"'tick' holds values -40000\.\.0, outside the store's int16"):
        store.append_episode(low, seed=2)
    store.close()
    assert ReplayStore.open(path, keys=("tick",))["tick"].ravel().tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("loaded", [True, False])
def test_an_episode_read_is_a_copy_the_caller_may_change(tmp_path: Path, loaded: bool) -> None:
    path = tmp_path / "demo.zarr"
    write_store(path, [4, 6], seeds=[0, 1]).close()
    store = ReplayStore.open(path, keys=("state",) if loaded else ())
    episode = store.get_episode(1, keys=("state",))
    before = episode["state"].copy()
    episode["state"] += 1000.0
    np.testing.assert_array_equal(store.get_episode(1, keys=("state",))["state"], before)


def test_a_reader_opening_during_a_commit_sees_a_consistent_store(tmp_path: Path, monkeypatch) -> None:
    """The reader's group attributes are read after the episode ends: an append committed between its
    open and its read of the ends adds a seed it sees, not an episode without one."""
    path = tmp_path / "demo.zarr"
    write_store(path, [4], seeds=[0]).close()
    real, appended = ReplayStore._read_structure, []

    def a_writer_commits_meanwhile(self) -> None:
        if not self.writable and not appended:  # the reader's group is open, its ends not yet read
            appended.append(True)
            with ReplayStore.open(path, mode="a") as writer:
                writer.append_episode(make_episode(3, 4), seed=1)
        real(self)

    monkeypatch.setattr(ReplayStore, "_read_structure", a_writer_commits_meanwhile)
    store = ReplayStore.open(path)
    assert appended and store.n_episodes == 2 and store.episode_seeds == [0, 1]


def test_append_rejects_bad_seed_and_read_only_store(tmp_path: Path) -> None:
    path = tmp_path / "demo.zarr"
    store = write_store(path, [4])
    with pytest.raises(DatasetError, match="seed"):
        store.append_episode(make_episode(2), seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ReadOnlyStoreError, match="read-only"):
        ReplayStore.open(path).append_episode(make_episode(2), seed=0)


# -------------------------------------------------------------------------------------- interrupted appends


class SimulatedCrashError(RuntimeError):
    pass


def _crash_on(monkeypatch: pytest.MonkeyPatch, method: str, array_path: str) -> None:
    """Make zarr.Array.<method> raise SimulatedCrashError when called on the array at `array_path`."""
    original = getattr(zarr.Array, method)

    def patched(self, *args, **kwargs):
        if self.path == array_path:
            raise SimulatedCrashError(f"simulated interruption in {method} of {array_path}")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(zarr.Array, method, patched)


# SimulatedCrashError points, in the order of an append: after data/state is written but before data/action;
# after all data and the seed are written but before episode_ends grows; after episode_ends grew
# (reserving a -1 entry) but before the new end is written.
CRASH_POINTS = [
    ("__setitem__", "data/action"),
    ("resize", "meta/episode_ends"),
    ("__setitem__", "meta/episode_ends"),
]


@pytest.mark.parametrize(("method", "array_path"), CRASH_POINTS)
def test_interrupted_append_is_invisible_and_recoverable(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    method: str,
    array_path: str,
) -> None:
    path = tmp_path / "demo.zarr"
    write_store(path, [4, 6], seeds=[0, 1])
    before = ReplayStore.open(path, keys=("state", "action", "keypoint"))

    store = ReplayStore.open(path, keys=(), mode="a")
    with monkeypatch.context() as patch:
        _crash_on(patch, method, array_path)
        with pytest.raises(SimulatedCrashError, match=f"simulated interruption in {method} of {array_path}"):
            store.append_episode(make_episode(5, 100), seed=99)
    store.close()  # the crashed writer is gone (its process would have released the lock)

    # The partial episode is not visible: same episodes, same data, same seeds.
    with caplog.at_level(logging.WARNING, logger="parapolicy.policy.data.replay_store"):
        after = ReplayStore.open(path, keys=("state", "action", "keypoint"))
    assert "uncommitted tail" in caplog.text
    assert after.n_episodes == 2 and after.n_steps == 10 and after.episode_seeds == [0, 1]
    for key in ("state", "action", "keypoint"):
        np.testing.assert_array_equal(after.array(key), before.array(key))
    if array_path.startswith("meta"):
        assert after.n_uncommitted_rows == 5  # every data array got the 5 new rows

    # Recoverable: a fresh writer trims the tail and appends.
    writer = ReplayStore.open(path, keys=(), mode="a")
    writer.append_episode(make_episode(3, 10), seed=2)
    final = ReplayStore.open(path, keys=("state", "action", "keypoint"))
    assert final.n_uncommitted_rows == 0
    np.testing.assert_array_equal(final.episode_ends, [4, 10, 13])
    assert final.episode_seeds == [0, 1, 2]
    np.testing.assert_allclose(final.get_episode(2)["state"], make_episode(3, 10)["state"])
    group = zarr.open_group(path, mode="r")
    assert {group[f"data/{k}"].shape[0] for k in ("state", "action", "keypoint")} == {13}

    # The same writer object can also retry after its own failure.
    with monkeypatch.context() as patch:
        _crash_on(patch, method, array_path)
        with pytest.raises(SimulatedCrashError, match=f"simulated interruption in {method} of {array_path}"):
            writer.append_episode(make_episode(2, 13), seed=3)
    writer.append_episode(make_episode(2, 13), seed=3)
    final = ReplayStore.open(path, keys=("state", "action", "keypoint"))
    np.testing.assert_array_equal(final.episode_ends, [4, 10, 13, 15])
    assert final.episode_seeds == [0, 1, 2, 3] and final.n_uncommitted_rows == 0


def test_an_append_interrupted_at_its_seed_record_is_invisible(tmp_path: Path, monkeypatch) -> None:
    """The seeds and checksums are recorded before the episode end (the end is the commit): an append
    killed while recording them leaves the store as it was, with an uncommitted tail."""
    path = tmp_path / "demo.zarr"
    write_store(path, [4, 6], seeds=[0, 1])
    store = ReplayStore.open(path, keys=(), mode="a")
    attrs_type = type(store._group.attrs)

    def crash(self, *args, **kwargs):
        raise SimulatedCrashError("simulated interruption in the seed record")

    with monkeypatch.context() as patch:
        patch.setattr(attrs_type, "update", crash)
        with pytest.raises(SimulatedCrashError, match="seed record"):
            store.append_episode(make_episode(5, 100), seed=99)
    store.close()
    after = ReplayStore.open(path)
    assert after.n_episodes == 2 and after.episode_seeds == [0, 1] and after.n_uncommitted_rows == 5


def test_interrupted_first_append(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "demo.zarr"
    store = ReplayStore.create(path)
    with monkeypatch.context() as patch:
        _crash_on(patch, "__setitem__", "data/action")
        with pytest.raises(SimulatedCrashError, match="simulated interruption in __setitem__ of data/action"):
            store.append_episode(make_episode(4), seed=0)
    store.close()
    empty = ReplayStore.open(path)
    assert empty.n_episodes == 0 and empty.n_steps == 0 and empty.n_uncommitted_rows == 4
    assert empty.array("state").shape == (0, 5) and empty.array("action").shape == (0, 2)
    writer = ReplayStore.open(path, keys=(), mode="a")
    writer.append_episode(make_episode(6), seed=7)
    final = ReplayStore.open(path)
    np.testing.assert_array_equal(final.episode_ends, [6])
    assert final.episode_seeds == [7] and final.n_uncommitted_rows == 0


# --------------------------------------------------------------------------------------- open validation


def _good_arrays(n: int = 10) -> dict[str, np.ndarray]:
    ep = make_episode(n)
    return {"state": ep["state"].astype(np.float32), "action": ep["action"].astype(np.float32)}


@pytest.mark.parametrize(
    ("arrays", "ends", "match"),
    [
        (_good_arrays(20), [10, 5, 20], r"not monotonic.*episode 1"),
        (_good_arrays(10), [-3, 10], "negative end"),
        (_good_arrays(10), [5, 5, 10], r"episode 1 is empty"),
        (_good_arrays(10), [0, 10], r"episode 0 is empty"),
        (_good_arrays(8), [5, 10], r"array length mismatch.*data/action: 8.*last episode end.*= 10"),
        (
            {"state": _good_arrays(10)["state"], "action": _good_arrays(8)["action"]},
            [5, 10],
            r"unequal length.*data/action: 8.*data/state: 10.*data/action is shorter",
        ),
        (
            {**_good_arrays(10), "state": np.where(np.arange(10)[:, None] == 7, np.nan, 1.0).repeat(5, 1)},
            [5, 10],
            r"data/state.*non-finite.*row 7 \(episode 1\)",
        ),
        ({**_good_arrays(10), "state": np.full((10, 5), -np.inf, np.float32)}, [10], "state.*non-finite"),
        ({"state": _good_arrays(10)["state"]}, [10], r"missing required key.*data/action"),
        (_good_arrays(10), None, "missing required array meta/episode_ends"),
        ({**_good_arrays(10), "state": np.zeros((10, 4), np.float32)}, [10], r"data/state.*per-step shape"),
    ],
)
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_open_validation_errors(tmp_path: Path, arrays, ends, match: str, zarr_format: int) -> None:
    path = write_raw(tmp_path / "bad.zarr", arrays, None if ends is None else np.asarray(ends), zarr_format)
    with pytest.raises(DatasetError, match=match):
        ReplayStore.open(path)


def test_dataset_error_is_value_error_and_open_errors(tmp_path: Path) -> None:
    assert issubclass(DatasetError, ValueError)
    with pytest.raises(StoreNotFoundError, match="no demonstration store at") as missing:
        ReplayStore.open(tmp_path / "nope.zarr")
    assert isinstance(missing.value, DatasetError) and isinstance(missing.value, FileNotFoundError)
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError, match="not a zarr group"):
        ReplayStore.open(tmp_path / "plain")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a valid zip"):
        ReplayStore.open(tmp_path / "junk.zip")
    path = tmp_path / "demo.zarr"
    write_store(path, [3])
    with pytest.raises(TypeError, match="sequence of key names"):
        ReplayStore.open(path, keys="state")  # type: ignore[arg-type]
    zarr.open_group(path, mode="r+").attrs["format_version"] = 99
    with pytest.raises(DatasetError, match="format version 99"):
        ReplayStore.open(path)


def test_longer_arrays_are_an_uncommitted_tail_not_an_error(tmp_path: Path) -> None:
    arrays = _good_arrays(13)
    arrays["action"] = arrays["action"][:11]  # unequal, but both past the last end: an interrupted append
    path = write_raw(tmp_path / "tail.zarr", arrays, np.array([4, 10]))
    store = ReplayStore.open(path)
    assert store.n_steps == 10 and store.n_uncommitted_rows == 3
    assert store.array("state").shape == (10, 5) and store.array("action").shape == (10, 2)


def test_validation_only_reads_requested_float_keys(tmp_path: Path) -> None:
    arrays = {**_good_arrays(10), "keypoint": np.full((10, 9, 2), np.nan, np.float32)}
    path = write_raw(tmp_path / "nan_kp.zarr", arrays, np.array([10]))
    store = ReplayStore.open(path)  # keypoint is not requested, so its NaNs are not read
    assert store.loaded_keys == ("state", "action") and "keypoint" in store.keys
    with pytest.raises(DatasetError, match=r"data/keypoint.*non-finite.*row 0"):
        ReplayStore.open(path, keys=("state", "keypoint"))
    with pytest.raises(DatasetError, match="data/keypoint"):
        store.get_episode(0, keys=("keypoint",))


# ------------------------------------------------------------------------------------- selective reading


def test_only_requested_keys_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "demo.zarr"
    store = ReplayStore.create(path)
    store.append_episode(make_episode(4, 0, img=True), seed=0)
    store.append_episode(make_episode(3, 4, img=True), seed=1)

    read_paths: list[str] = []
    original = zarr.Array.__getitem__

    def spy(self, selection):
        read_paths.append(self.path)
        return original(self, selection)

    monkeypatch.setattr(zarr.Array, "__getitem__", spy)
    opened = ReplayStore.open(path, keys=("state", "action"))
    assert set(read_paths) == {"meta/episode_ends", "data/state", "data/action"}
    assert set(opened.keys) == {"state", "action", "keypoint", "img"}
    assert opened.trailing_shape("img") == (96, 96, 3)

    read_paths.clear()
    ep = opened.get_episode(1)  # loaded keys come from memory
    assert set(ep) == {"state", "action"} and read_paths == []
    img = opened.get_episode(1, keys=("img",))["img"]  # an unloaded key: only this episode is read
    assert img.shape == (3, 96, 96, 3) and img.dtype == np.uint8 and (img == 4).all()
    assert read_paths == ["data/img"]
    with pytest.raises(KeyError, match="data/nope"):
        opened.get_episode(0, keys=("nope",))


# ---------------------------------------------------------------------------------- reference format 2


@pytest.fixture
def reference_store(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray], np.ndarray]:
    arrays, ends = reference_arrays([6, 4, 5])
    path = write_raw(tmp_path / "pusht_cchi_v7_replay.zarr", arrays, ends, zarr_format=2)
    return path, arrays, ends


def _snapshot(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("packing", ["directory", "zip", "zipped-directory"])
def test_reads_reference_format2_store_read_only(reference_store, tmp_path: Path, packing: str) -> None:
    path, arrays, ends = reference_store
    if packing == "zip":
        path = zip_dir(path, tmp_path / "pusht_cchi_v7_replay.zarr.zip")
    elif packing == "zipped-directory":  # the layout of the reference's download, pusht.zip
        path = zip_dir(path, tmp_path / "pusht.zip", prefix="pusht/pusht_cchi_v7_replay.zarr/")
    snapshot = _snapshot(path)
    with ReplayStore.open(path, keys=("state", "keypoint", "action")) as store:
        assert store.zarr_format == 2 and not store.writable
        assert store.n_episodes == 3 and store.n_steps == 15
        np.testing.assert_array_equal(store.episode_ends, ends)
        assert store.episode_seeds == [None, None, None]
        assert set(store.keys) == {"state", "action", "keypoint", "img", "n_contacts"}
        assert store.loaded_keys == ("state", "keypoint", "action")
        np.testing.assert_array_equal(store.get_episode(1)["keypoint"], arrays["keypoint"][6:10])
        with pytest.raises(ReadOnlyStoreError, match="read-only"):
            store.append_episode(make_episode(3), seed=0)
    with pytest.raises(ReadOnlyStoreError, match="read-only"):
        ReplayStore.open(path, keys=(), mode="a")
    # The training dataset reads it the same way (only state, keypoint and action).
    dataset = PushTLowdimDataset(path, val_ratio=0.0)
    assert len(dataset) == 0  # episodes of 6, 4 and 5 steps are all shorter than the 8 a window needs
    short = PushTLowdimDataset(path, horizon=4, n_obs_steps=2, n_action_steps=2, val_ratio=0.0)
    assert len(short) == sum(n - 4 + 1 + 1 + 1 for n in (6, 4, 5))
    np.testing.assert_allclose(short[0]["action"].numpy(), arrays["action"][[0, 0, 1, 2]])
    assert _snapshot(path) == snapshot  # nothing was written
