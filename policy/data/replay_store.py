"""Zarr demonstration store in the reference (diffusion_policy ReplayBuffer) layout.

This is the only module in the project that imports zarr; everything else sees numpy arrays.

Layout (time-major, episodes concatenated along axis 0, ``N`` rows, ``E`` episodes)::

    data/state       (N, 5)          float32  agent x, y, block x, y, block angle (raw)
    data/action      (N, 2)          float32  commanded agent target, px
    data/keypoint    (N, 9, 2)       float32  block keypoints, world px
    data/img         (N, 96, 96, 3)  uint8    optional rendered frames
    data/n_contacts  (N, 1)          float32  optional
    data/<other>     (N, ...)                 any further per-step arrays
    meta/episode_ends (E,)           int64    cumulative exclusive ends, last value == N

Root attributes of stores written here: ``format`` / ``format_version``, ``env_version``, ``expert``
(expert settings), ``metadata`` (free-form dict from the caller) and ``episode_seeds`` (one entry per
episode, ``None`` where unknown).

Writing: zarr format 3, chunked along time only (about 2 MB per chunk), Blosc zstd (level 5, bitshuffle).
:meth:`ReplayStore.append_episode` writes in a fixed order so that an interrupted append never exposes a
partial episode:

1. each data array is resized and the new rows written;
2. ``attrs["episode_seeds"]`` gets the new seed;
3. ``meta/episode_ends`` is resized (its fill value is -1) and the new end written -- LAST.

``meta/episode_ends`` is the commit record: rows past its last value, seeds past its length and trailing
-1 entries (the end was reserved but not written) are an uncommitted tail. Opening a store ignores that
tail (a truncated view, logged as a warning) and the next append overwrites it: each data array is
resized to exactly the new episode's end, the seed list is rewritten and ``episode_ends`` grows by one.
Data arrays *shorter* than the last episode end are corruption and raise :class:`DatasetError`. zarr's
local store writes every file atomically (temp file + rename), so this also holds for a killed process,
not only for an exception (durability across a power cut is up to the file system). There is one writer
at a time; nothing here locks the store.

Reading: format-3 stores written here, and the reference's format-2 stores (a directory or a ``.zip``
read through zarr's ``ZipStore``). Format-2 and zip stores open read-only; writing to them raises
:class:`ReadOnlyStoreError`. Only the keys asked for are read into memory.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
import zarr
import zarr.storage
from zarr.codecs import BloscCodec

from parapolicy.policy.errors import ParapolicyError

__all__ = [
    "DEFAULT_KEYS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "KNOWN_TRAILING_SHAPES",
    "DatasetError",
    "ReadOnlyStoreError",
    "ReplayStore",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "parapolicy-replay"
FORMAT_VERSION = 1
DEFAULT_KEYS: tuple[str, ...] = ("state", "action")
# Trailing (per-step) shapes of the reference keys; checked on open and on append.
KNOWN_TRAILING_SHAPES: dict[str, tuple[int, ...]] = {
    "state": (5,),
    "action": (2,),
    "keypoint": (9, 2),
    "img": (96, 96, 3),
    "n_contacts": (1,),
}

_ENDS_PATH = "meta/episode_ends"
_ENDS_FILL = -1  # reserved-but-unwritten episode end (interrupted commit)
_ENDS_CHUNK = 1 << 14
_CHUNK_TARGET_BYTES = 2 * 1024 * 1024  # the reference's ~2 MB heuristic
_CHECK_BLOCK_BYTES = 64 * 1024 * 1024  # non-finite scan block, bounds the temporary mask


class DatasetError(ParapolicyError, ValueError):
    """A demonstration store is malformed, or data given to it is invalid.

    The message names the key, the episode or the row, and the problem.
    """

    exit_code = 5


class ReadOnlyStoreError(ParapolicyError, PermissionError):
    """A write was attempted on a store opened read-only (mode ``"r"``, format 2, or a zip)."""

    exit_code = 5


def _compressor() -> BloscCodec:
    return BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")


def _time_chunks(trailing: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunk shape that splits along time only, targeting about 2 MB per chunk."""
    row_bytes = max(1, math.prod(trailing) * itemsize)
    return (max(1, _CHUNK_TARGET_BYTES // row_bytes), *trailing)


def _first_nonfinite_row(values: np.ndarray) -> int | None:
    """Index of the first row of ``values`` (T, ...) holding NaN or +-inf, or ``None``.

    Scans in blocks so a large float array does not need a full-size temporary mask.
    """
    if not np.issubdtype(values.dtype, np.floating) or values.shape[0] == 0:
        return None
    row_bytes = max(1, values[0].nbytes)
    block = max(1, _CHECK_BLOCK_BYTES // row_bytes)
    for start in range(0, values.shape[0], block):
        chunk = values[start : start + block].reshape(min(block, values.shape[0] - start), -1)  # (b, D)
        bad = ~np.isfinite(chunk).all(axis=1)
        if bad.any():
            return start + int(np.argmax(bad))
    return None


def _check_json(name: str, value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as err:
        msg = f"{name} must be JSON-serialisable to be stored as a zarr attribute: {err}"
        raise DatasetError(msg) from err
    return value


def _as_key_list(keys: Iterable[str]) -> list[str]:
    if isinstance(keys, str):
        raise TypeError(f"keys must be a sequence of key names, not the string {keys!r} (use ({keys!r},))")
    return list(dict.fromkeys(keys))


def _group_path_in_zip(path: Path) -> str:
    """Group path inside a zip: its root, or the one ``*.zarr`` directory of an archived directory store.

    zarr's own ``.zarr.zip`` files keep the group at the root; an archive of a store directory (such as
    the reference's ``pusht.zip``, holding ``pusht/pusht_cchi_v7_replay.zarr/``) keeps it below.
    """
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    if any(name in (".zgroup", "zarr.json") for name in names):
        return ""
    candidates = sorted(
        {
            name.rsplit("/", 1)[0]
            for name in names
            if name.endswith(("/.zgroup", "/zarr.json")) and name.rsplit("/", 1)[0].endswith(".zarr")
        }
    )
    return candidates[0] if len(candidates) == 1 else ""


def _episode_of_row(episode_ends: np.ndarray, row: int) -> int:
    return int(np.searchsorted(episode_ends, row, side="right"))


def _as_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise DatasetError(f"episode seed must be an int or None, got {type(seed).__name__} {seed!r}")
    return int(seed)


class ReplayStore:
    """Episodes of per-step arrays in one zarr group; see the module docstring for the layout.

    Build one with :meth:`open` or :meth:`create`, not with the constructor. Use it as a context manager
    (or call :meth:`close`) when it reads a ``.zip``.

    Attributes:
        path: Location of the store.
        writable: Whether :meth:`append_episode` is allowed.
        zarr_format: 2 (reference stores) or 3 (stores written here).
    """

    def __init__(self, path: Path, group: Any, store: Any, writable: bool, zarr_format: int) -> None:
        self.path = path
        self.writable = writable
        self.zarr_format = zarr_format
        self._group = group
        self._store = store  # a ZipStore to close, or None
        self._arrays: dict[str, Any] = {}  # key -> zarr array under data/
        self._ends_arr: Any = None
        self._episode_ends = np.zeros(0, dtype=np.int64)
        self._seeds: list[int | None] = []
        self._loaded: dict[str, np.ndarray] = {}
        self._tail_rows = 0

    # ------------------------------------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        keys: Sequence[str] = DEFAULT_KEYS,
        mode: Literal["r", "a"] = "r",
    ) -> ReplayStore:
        """Open an existing store, validate it and load ``keys`` into memory.

        Args:
            path: A store directory (zarr format 2 or 3), or a ``.zip`` file (read-only) holding a store at
                its root or one ``*.zarr`` store directory.
            keys: Data keys (without the ``data/`` prefix) that must be present; they are read into numpy
                and checked for non-finite values. Other keys are never read here. Pass ``()`` to open
                only for appending.
            mode: ``"r"`` read-only, ``"a"`` to append (format-3 directory stores only).

        Returns:
            The opened store.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            DatasetError: The store is not in the layout, or fails validation (missing key, bad
                ``episode_ends``, arrays shorter than the episodes, empty episode, non-finite values).
            ReadOnlyStoreError: ``mode="a"`` on a format-2 or zip store.
        """
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        root = Path(path)
        if not root.exists():
            raise FileNotFoundError(f"no demonstration store at {root}")
        is_zip = root.is_file() and root.suffix == ".zip"
        if is_zip and mode == "a":
            raise ReadOnlyStoreError(f"{root}: zip stores are read-only; append to a directory store instead")
        keys = _as_key_list(keys)
        zip_store = None
        if is_zip:
            if not zipfile.is_zipfile(root):
                raise DatasetError(f"{root} is not a valid zip file")
            zip_store = zarr.storage.ZipStore(root, mode="r")
        try:
            try:
                if zip_store is not None:
                    group = zarr.open_group(zip_store, mode="r", path=_group_path_in_zip(root) or None)
                else:
                    group = zarr.open_group(root, mode="r")
            except (zarr.errors.GroupNotFoundError, FileNotFoundError, NotADirectoryError) as err:
                raise DatasetError(f"{root} is not a zarr group (no zarr metadata at its root)") from err
            zarr_format = int(group.metadata.zarr_format)
            version = group.attrs.get("format_version")
            ours = group.attrs.get("format") == FORMAT_NAME
            if ours and isinstance(version, int) and version > FORMAT_VERSION:
                raise DatasetError(
                    f"{root} was written with {FORMAT_NAME} format version {version}; this code reads up to "
                    f"{FORMAT_VERSION}"
                )
            if mode == "a":
                if zarr_format != 3:
                    raise ReadOnlyStoreError(
                        f"{root} is a zarr format-{zarr_format} store (reference layout) and is opened "
                        "read-only; write new demonstrations to a format-3 store made with ReplayStore.create"
                    )
                group = zarr.open_group(root, mode="r+")
            self = cls(root, group, zip_store, writable=mode == "a", zarr_format=zarr_format)
            self._read_structure()
            self._load(keys)
        except BaseException:
            if zip_store is not None:
                zip_store.close()
            raise
        return self

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        env_version: str | None = None,
        expert: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> ReplayStore:
        """Create an empty, writable zarr format-3 store.

        Data arrays are created by the first :meth:`append_episode`; ``meta/episode_ends`` exists from
        the start (length 0), so an interrupted first append is also recognised as a tail.

        Args:
            path: Directory to create (not a ``.zip``).
            env_version: Environment id/version the demonstrations were recorded with.
            expert: Expert or teleop settings (JSON-serialisable).
            metadata: Any further JSON-serialisable information, stored as ``attrs["metadata"]``.
            overwrite: Replace an existing directory at ``path``; otherwise an existing path is an error.

        Returns:
            The new store, open for appending.

        Raises:
            FileExistsError: ``path`` exists and ``overwrite`` is false.
            ReadOnlyStoreError: ``path`` ends in ``.zip``.
            DatasetError: ``expert`` or ``metadata`` is not JSON-serialisable.
        """
        root = Path(path)
        if root.suffix == ".zip":
            raise ReadOnlyStoreError(f"{root}: writing zip stores is not supported; use a directory")
        attrs = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "env_version": env_version,
            "expert": _check_json("expert", dict(expert) if expert is not None else {}),
            "metadata": _check_json("metadata", dict(metadata) if metadata is not None else {}),
            "episode_seeds": [],
        }
        if root.exists():
            if not overwrite:
                raise FileExistsError(f"{root} already exists (pass overwrite=True to replace it)")
            if root.is_dir():
                shutil.rmtree(root)
            else:
                root.unlink()
        group = zarr.open_group(root, mode="w", zarr_format=3, attributes=attrs)
        group.require_group("data")
        group.require_group("meta").create_array(
            "episode_ends",
            shape=(0,),
            chunks=(_ENDS_CHUNK,),
            dtype="int64",
            fill_value=_ENDS_FILL,
            compressors=_compressor(),
        )
        self = cls(root, group, None, writable=True, zarr_format=3)
        self._read_structure()
        return self

    def close(self) -> None:
        """Release the underlying zip file, if any. Loaded numpy arrays stay usable."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> ReplayStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"ReplayStore({str(self.path)!r}, format={self.zarr_format}, episodes={self.n_episodes}, "
            f"steps={self.n_steps}, keys={list(self.keys)}, writable={self.writable})"
        )

    # ------------------------------------------------------------------------------------------- validation

    def _read_structure(self) -> None:
        """Read and validate ``meta/episode_ends``, the data arrays' shapes and the seeds attribute."""
        where = str(self.path)
        if _ENDS_PATH not in self._group:
            raise DatasetError(f"{where}: missing required array {_ENDS_PATH}")
        ends_arr = self._group[_ENDS_PATH]
        if not isinstance(ends_arr, zarr.Array):
            raise DatasetError(f"{where}: {_ENDS_PATH} is not an array")
        if len(ends_arr.shape) != 1 or not np.issubdtype(ends_arr.dtype, np.integer):
            raise DatasetError(
                f"{where}: {_ENDS_PATH} must be a 1-D integer array, got shape {ends_arr.shape} "
                f"dtype {ends_arr.dtype}"
            )
        ends = np.asarray(ends_arr[:], dtype=np.int64)  # (E_stored,)
        n_reserved = 0
        while n_reserved < ends.size and ends[ends.size - 1 - n_reserved] == _ENDS_FILL:
            n_reserved += 1  # trailing fill: an end was reserved but never written (interrupted commit)
        ends = ends[: ends.size - n_reserved]
        lengths = np.diff(ends, prepend=0)  # (E,)
        if ends.size and (ends < 0).any():
            bad = int(np.argmax(ends < 0))
            raise DatasetError(f"{where}: {_ENDS_PATH} has a negative end at episode {bad}: {ends[bad]}")
        if (lengths < 0).any():
            bad = int(np.argmax(lengths < 0))
            raise DatasetError(
                f"{where}: {_ENDS_PATH} is not monotonic: end of episode {bad} ({ends[bad]}) is before "
                f"the end of episode {bad - 1} ({ends[bad - 1]})"
            )
        if (lengths == 0).any():
            bad = int(np.argmax(lengths == 0))
            raise DatasetError(f"{where}: episode {bad} is empty ({_ENDS_PATH}[{bad}] == {ends[bad]})")
        n_steps = int(ends[-1]) if ends.size else 0

        arrays: dict[str, Any] = {}
        data = self._group.get("data", None)
        if data is not None:
            for key, arr in data.arrays():
                arrays[key] = arr
        array_lengths = {key: int(arr.shape[0]) if len(arr.shape) else 0 for key, arr in arrays.items()}
        for key, arr in arrays.items():
            if len(arr.shape) == 0:
                raise DatasetError(f"{where}: data/{key} is a scalar; data arrays need a time axis")
            expected = KNOWN_TRAILING_SHAPES.get(key)
            if expected is not None and tuple(arr.shape[1:]) != expected:
                raise DatasetError(
                    f"{where}: data/{key} has per-step shape {tuple(arr.shape[1:])}, expected {expected}"
                )
        short = {key: n for key, n in array_lengths.items() if n < n_steps}
        if short:
            listing = ", ".join(f"data/{key}: {n}" for key, n in sorted(array_lengths.items()))
            unequal = len(set(array_lengths.values())) > 1
            problem = "arrays of unequal length" if unequal else "array length mismatch"
            raise DatasetError(
                f"{where}: {problem} ({listing}); last episode end {_ENDS_PATH}[-1] = {n_steps}, so "
                f"{', '.join(f'data/{k}' for k in sorted(short))} is shorter than the recorded episodes "
                "(corrupt store)"
            )
        tail_rows = max((n - n_steps for n in array_lengths.values()), default=0)

        seeds_attr = self._group.attrs.get("episode_seeds")
        extra_seeds = 0
        if seeds_attr is None:
            seeds: list[int | None] = [None] * ends.size  # reference stores do not record seeds
        else:
            if not isinstance(seeds_attr, list):
                raise DatasetError(f"{where}: attrs['episode_seeds'] must be a list")
            if len(seeds_attr) < ends.size:
                raise DatasetError(
                    f"{where}: attrs['episode_seeds'] has {len(seeds_attr)} entries but the store has "
                    f"{ends.size} episodes"
                )
            seeds = [_as_seed(s) for s in seeds_attr[: ends.size]]
            extra_seeds = len(seeds_attr) - ends.size
        if tail_rows or n_reserved or extra_seeds:
            logger.warning(
                "%s: ignoring the uncommitted tail of an interrupted append (%d rows, %d reserved episode "
                "ends, %d seeds); the next append overwrites it",
                where,
                tail_rows,
                n_reserved,
                extra_seeds,
            )
        self._ends_arr = ends_arr
        self._episode_ends = ends
        self._arrays = arrays
        self._seeds = seeds
        self._tail_rows = tail_rows

    def _load(self, keys: Iterable[str]) -> None:
        keys = _as_key_list(keys)
        missing = [k for k in keys if k not in self._arrays]
        if missing:
            raise DatasetError(
                f"{self.path}: missing required key(s) {', '.join(f'data/{k}' for k in missing)} "
                f"(the store has: {', '.join(f'data/{k}' for k in sorted(self._arrays)) or 'no data arrays'})"
            )
        for key in keys:
            self._loaded[key] = self._read_rows(key, 0, self.n_steps)

    def _read_rows(self, key: str, start: int, stop: int) -> np.ndarray:
        """Read rows ``[start, stop)`` of ``data/key`` into numpy and reject non-finite values."""
        values = np.asarray(self._arrays[key][start:stop])  # (stop - start, ...)
        bad = _first_nonfinite_row(values)
        if bad is not None:
            row = start + bad
            episode = _episode_of_row(self._episode_ends, row)
            raise DatasetError(
                f"{self.path}: data/{key} has a non-finite value (NaN or inf) at row {row} "
                f"(episode {episode})"
            )
        return values

    # ---------------------------------------------------------------------------------------------- reading

    @property
    def keys(self) -> tuple[str, ...]:
        """All data keys in the store (sorted), loaded or not."""
        return tuple(sorted(self._arrays))

    @property
    def loaded_keys(self) -> tuple[str, ...]:
        """Data keys currently held in memory."""
        return tuple(self._loaded)

    @property
    def n_episodes(self) -> int:
        """Number of committed episodes ``E``."""
        return int(self._episode_ends.size)

    @property
    def n_steps(self) -> int:
        """Number of committed rows ``N`` (the last episode end, 0 when empty)."""
        return int(self._episode_ends[-1]) if self._episode_ends.size else 0

    @property
    def episode_ends(self) -> np.ndarray:
        """Cumulative exclusive episode ends, (E,) int64 (a copy)."""
        return self._episode_ends.copy()

    @property
    def episode_lengths(self) -> np.ndarray:
        """Steps per episode, (E,) int64."""
        return np.diff(self._episode_ends, prepend=0)

    @property
    def episode_seeds(self) -> list[int | None]:
        """Reset seed of each episode (``None`` where not recorded, e.g. all reference episodes)."""
        return list(self._seeds)

    @property
    def n_uncommitted_rows(self) -> int:
        """Rows past the last episode end left by an interrupted append (ignored; overwritten on append)."""
        return self._tail_rows

    @property
    def attrs(self) -> dict[str, Any]:
        """A copy of the root attributes (env version, expert settings, metadata, seeds, ...)."""
        return dict(self._group.attrs)

    @property
    def env_version(self) -> str | None:
        """Environment version recorded at creation, if any."""
        return self._group.attrs.get("env_version")

    @property
    def expert(self) -> dict[str, Any]:
        """Expert settings recorded at creation (empty if none)."""
        return dict(self._group.attrs.get("expert") or {})

    @property
    def metadata(self) -> dict[str, Any]:
        """Free-form metadata recorded at creation (empty if none)."""
        return dict(self._group.attrs.get("metadata") or {})

    def trailing_shape(self, key: str) -> tuple[int, ...]:
        """Per-step shape of ``data/key`` (its shape without the time axis), read from metadata only."""
        self._require_key(key)
        return tuple(self._arrays[key].shape[1:])

    def array(self, key: str) -> np.ndarray:
        """All committed rows of ``data/key``, (N, ...), loading (and validating) it on first use.

        The returned array is the store's in-memory copy; do not modify it.
        """
        self._require_key(key)
        if key not in self._loaded:
            self._loaded[key] = self._read_rows(key, 0, self.n_steps)
        return self._loaded[key]

    def __getitem__(self, key: str) -> np.ndarray:
        """Same as :meth:`array`."""
        return self.array(key)

    def __contains__(self, key: object) -> bool:
        return key in self._arrays

    def episode_slice(self, i: int) -> slice:
        """Row range of episode ``i`` (negative indices count from the end)."""
        n = self.n_episodes
        if not -n <= i < n:
            raise IndexError(f"episode index {i} out of range for {n} episodes")
        i %= n
        start = int(self._episode_ends[i - 1]) if i > 0 else 0
        return slice(start, int(self._episode_ends[i]))

    def get_episode(self, i: int, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Arrays of episode ``i``.

        Args:
            i: Episode index (negative counts from the end).
            keys: Data keys to return; default: the loaded keys. Keys that are not loaded are read from
                the store for this episode only (and checked for non-finite values), not cached.

        Returns:
            ``{key: (L, ...) array}``; loaded keys are copies, so they may be modified.
        """
        sl = self.episode_slice(i)
        keys = self.loaded_keys if keys is None else tuple(_as_key_list(keys))
        out: dict[str, np.ndarray] = {}
        for key in keys:
            self._require_key(key)
            if key in self._loaded:
                out[key] = self._loaded[key][sl].copy()
            else:
                out[key] = self._read_rows(key, sl.start, sl.stop)
        return out

    def _require_key(self, key: str) -> None:
        if key not in self._arrays:
            raise KeyError(f"no data/{key} in {self.path} (keys: {', '.join(self.keys) or 'none'})")

    # ---------------------------------------------------------------------------------------------- writing

    def append_episode(self, episode: Mapping[str, Any], seed: int | None = None) -> int:
        """Append one episode; it becomes visible only once all its rows are written.

        Args:
            episode: ``{key: (L, ...) array}`` with ``L >= 1`` rows each. The first episode fixes the
                store's keys (floating arrays are stored as float32, others keep their dtype); later
                episodes must give exactly those keys, with the same per-step shapes and castable dtypes.
            seed: The env reset seed of this episode, or ``None``.

        Returns:
            The index of the new episode.

        Raises:
            ReadOnlyStoreError: The store was opened read-only.
            DatasetError: The episode is empty, its arrays differ in length, a key is missing or extra,
                a shape or dtype does not match, or it holds a non-finite value. Nothing is written.
        """
        if not self.writable:
            raise ReadOnlyStoreError(
                f"{self.path} is open read-only (format {self.zarr_format}); "
                "reopen a format-3 directory store with mode='a' to append"
            )
        seed = _as_seed(seed)
        values = self._check_episode(episode)
        # Rows, seeds and reserved ends left by an interrupted append are overwritten below: every data
        # array is resized to exactly `start + L`, the seed list is rewritten from the committed one and
        # episode_ends is resized to E + 1. No separate trimming pass is needed.
        if self.n_episodes == 0:
            self._reset_arrays(values)
        start = self.n_steps
        for key, rows in values.items():
            self._write_rows(key, rows, start)
        length = next(iter(values.values())).shape[0]
        self._commit(start + length, seed)
        self._tail_rows = 0
        self._loaded = {k: np.concatenate([v, values[k]]) for k, v in self._loaded.items() if k in values}
        return self.n_episodes - 1

    def _check_episode(self, episode: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(episode, Mapping) or not episode:
            raise DatasetError("episode must be a non-empty mapping of key -> (L, ...) array")
        values = {str(k): np.asarray(v) for k, v in episode.items()}
        lengths = {}
        for key, v in values.items():
            if not key or "/" in key:
                raise DatasetError(f"invalid data key {key!r}")
            if v.ndim == 0:
                raise DatasetError(f"episode key {key!r} is a scalar; it needs a time axis")
            lengths[key] = v.shape[0]
        if len(set(lengths.values())) > 1:
            raise DatasetError(f"episode arrays of unequal length: {lengths}")
        if next(iter(lengths.values())) == 0:
            raise DatasetError("empty episode: arrays have 0 rows")
        if self.n_episodes > 0:
            stored, given = set(self._arrays), set(values)
            if stored != given:
                parts = []
                if stored - given:
                    parts.append(f"missing {sorted(stored - given)}")
                if given - stored:
                    parts.append(f"extra {sorted(given - stored)}")
                raise DatasetError(
                    f"episode keys must match the store's keys {sorted(stored)}: {'; '.join(parts)}"
                )
        out: dict[str, np.ndarray] = {}
        for key, v in values.items():
            expected = KNOWN_TRAILING_SHAPES.get(key)
            if expected is not None and tuple(v.shape[1:]) != expected:
                raise DatasetError(
                    f"episode key {key!r} has per-step shape {v.shape[1:]}, expected {expected}"
                )
            if self.n_episodes > 0:
                arr = self._arrays[key]
                if tuple(v.shape[1:]) != tuple(arr.shape[1:]):
                    raise DatasetError(
                        f"episode key {key!r} has per-step shape {v.shape[1:]}, store has {arr.shape[1:]}"
                    )
                dtype = np.dtype(arr.dtype)
            else:
                dtype = np.dtype(np.float32) if np.issubdtype(v.dtype, np.floating) else v.dtype
            if not np.can_cast(v.dtype, dtype, casting="same_kind"):
                raise DatasetError(f"episode key {key!r} has dtype {v.dtype}, cannot store it as {dtype}")
            v = np.ascontiguousarray(v, dtype=dtype)
            bad = _first_nonfinite_row(v)
            if bad is not None:
                raise DatasetError(f"episode key {key!r} has a non-finite value (NaN or inf) at step {bad}")
            out[key] = v
        return out

    def _reset_arrays(self, values: Mapping[str, np.ndarray]) -> None:
        """First episode: (re)create the data arrays, dropping any left by an interrupted first append."""
        data = self._group.require_group("data")
        for key in list(data.array_keys()):
            del data[key]
        self._arrays = {}
        for key, v in values.items():
            self._arrays[key] = data.create_array(
                key,
                shape=(0, *v.shape[1:]),
                dtype=v.dtype,
                chunks=_time_chunks(v.shape[1:], v.itemsize),
                compressors=_compressor(),
            )

    def _write_rows(self, key: str, rows: np.ndarray, start: int) -> None:
        """Grow ``data/key`` and write ``rows`` (L, ...) at ``start`` (step 1 of an append)."""
        arr = self._arrays[key]
        arr.resize((start + rows.shape[0], *arr.shape[1:]))
        arr[start : start + rows.shape[0]] = rows

    def _commit(self, end: int, seed: int | None) -> None:
        """Record the seed, then the new episode end (steps 2 and 3 of an append: the commit)."""
        seeds = [*self._seeds, seed]
        self._group.attrs["episode_seeds"] = seeds
        n = self.n_episodes
        self._ends_arr.resize((n + 1,))
        self._ends_arr[n] = end
        self._seeds = seeds
        self._episode_ends = np.append(self._episode_ends, np.int64(end))
