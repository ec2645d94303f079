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

import fcntl
import json
import logging
import math
import os
import shutil
import socket
import sys
import time
import weakref
import zipfile
import zlib
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
    "StoreLockedError",
    "StoreNotFoundError",
]

logger = logging.getLogger(__name__)
DAMAGED = "the store is damaged: restore it from a copy or re-collect it"

FORMAT_NAME = "parapolicy-replay"
FORMAT_VERSION = 2  # 2: per-episode checksums (attrs["episode_crc32"]); 1: none (upgraded on append)
_CRC_ATTR = "episode_crc32"
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


class StoreNotFoundError(DatasetError, FileNotFoundError):
    """No demonstration store at the given path."""


class ReadOnlyStoreError(ParapolicyError, PermissionError):
    """A write was attempted on a store opened read-only (mode ``"r"``, format 2, or a zip)."""

    exit_code = 5


class StoreLockedError(ParapolicyError, BlockingIOError):
    """Another writer holds the store (one writer per store at a time)."""

    exit_code = 5


def lock_path(root: Path) -> Path:
    """The lock file of the store at ``root``: a hidden sibling (zarr ignores nothing inside a store)."""
    return root.parent / f".{root.name}.lock"


class _WriterLock:
    """An exclusive `fcntl.flock` on the store's lock file, released by `release` or when collected."""

    def __init__(self, root: Path, timeout: float) -> None:
        path = lock_path(root)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # an unwritable or missing place: say so in one line
            raise DatasetError(
                f"cannot write a store at {root}: its lock file {path} cannot be created "
                f"({exc.strerror or exc}); choose a writable directory"
            ) from exc
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
                    os.close(fd)
                    waited = f" after waiting {timeout:g} s" if timeout > 0 else ""
                    raise StoreLockedError(
                        f"{root} is being written by {holder}{waited}; a store has one writer at a time "
                        f"(lock file {path}): wait for that writer to finish, or write to another store"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self._release = weakref.finalize(self, os.close, fd)  # closing the fd drops the lock

    def release(self) -> None:
        self._release()


def _crc(rows: np.ndarray) -> int:
    """CRC-32 of rows (L, ...) as stored (C order, the store's dtype)."""
    return zlib.crc32(np.ascontiguousarray(rows).data)


def _invalid_metadata_file(root: Path) -> str:
    """The first zarr metadata file under a directory store that is not valid JSON (for the message)."""
    if not root.is_dir():
        return str(root)
    names = ("zarr.json", ".zgroup", ".zarray", ".zattrs")
    for meta in sorted(p for name in names for p in root.rglob(name)):
        try:
            json.loads(meta.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return str(meta)
    return str(root)


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


def _clear_for_create(root: Path, overwrite: bool, lock: _WriterLock) -> None:
    """Remove whatever is at ``root`` before a store is created there; without ``overwrite``, release
    ``lock`` and refuse (FileExistsError)."""
    if not root.exists():
        return
    if not overwrite:
        lock.release()
        raise FileExistsError(f"{root} already exists (pass overwrite=True to replace it)")
    if root.is_dir():
        shutil.rmtree(root)
    else:
        root.unlink()


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
        self._crcs: dict[str, list[int]] | None = None  # key -> CRC-32 per committed episode; None: legacy
        self._lock: _WriterLock | None = None

    # ------------------------------------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        keys: Sequence[str] = DEFAULT_KEYS,
        mode: Literal["r", "a"] = "r",
        lock_timeout: float = 0.0,
    ) -> ReplayStore:
        """Open an existing store, validate it and load ``keys`` into memory.

        Args:
            path: A store directory (zarr format 2 or 3), or a ``.zip`` file (read-only) holding a store at
                its root or one ``*.zarr`` store directory.
            keys: Data keys (without the ``data/`` prefix) that must be present; they are read into numpy
                and checked for non-finite values. Other keys are never read here. Pass ``()`` to open
                only for appending.
            mode: ``"r"`` read-only, ``"a"`` to append (format-3 directory stores only). An appending
                store holds the store's writer lock until :meth:`close`; a format-1 store (no checksums)
                is upgraded to format 2 on open.
            lock_timeout: Seconds to wait for another writer to release the store (``mode="a"``).

        Returns:
            The opened store.

        Raises:
            StoreNotFoundError: ``path`` does not exist (a `DatasetError` and a `FileNotFoundError`).
            DatasetError: The store is not in the layout, or fails validation (missing key, bad
                ``episode_ends``, arrays shorter than the episodes, empty episode, non-finite values).
            ReadOnlyStoreError: ``mode="a"`` on a format-2 or zip store.
            StoreLockedError: ``mode="a"`` while another writer holds the store.
        """
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        root = Path(path)
        if not root.exists():
            raise StoreNotFoundError(
                f"no demonstration store at {root}: write one with parapolicy-collect, or give the path "
                "of a zarr store in the reference layout (a directory or a .zip)"
            )
        is_zip = root.is_file() and root.suffix == ".zip"
        if is_zip and mode == "a":
            raise ReadOnlyStoreError(f"{root}: zip stores are read-only; append to a directory store instead")
        keys = _as_key_list(keys)
        zip_store = None
        if is_zip:
            if not zipfile.is_zipfile(root):
                raise DatasetError(f"{root} is not a valid zip file")
            zip_store = zarr.storage.ZipStore(root, mode="r")
        lock = _WriterLock(root, lock_timeout) if mode == "a" else None
        try:
            try:
                if zip_store is not None:
                    group = zarr.open_group(zip_store, mode="r", path=_group_path_in_zip(root) or None)
                else:
                    group = zarr.open_group(root, mode="r")
            except (zarr.errors.GroupNotFoundError, FileNotFoundError, NotADirectoryError) as err:
                raise DatasetError(f"{root} is not a zarr group (no zarr metadata at its root)") from err
            except (ValueError, UnicodeDecodeError, KeyError, TypeError) as err:
                raise DatasetError(
                    f"{_invalid_metadata_file(root)}: unreadable zarr metadata ({type(err).__name__}: {err})"
                ) from err
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
            self._lock = lock
            try:
                self._read_structure()
            except (ValueError, UnicodeDecodeError, KeyError, TypeError) as err:
                if isinstance(err, DatasetError):
                    raise
                raise DatasetError(
                    f"{_invalid_metadata_file(root)}: unreadable zarr metadata ({type(err).__name__}: {err})"
                ) from err
            if mode == "a" and self._crcs is None:
                self._upgrade()
            self._load(keys)
        except BaseException:
            if zip_store is not None:
                zip_store.close()
            if lock is not None:
                lock.release()
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
        lock_timeout: float = 0.0,
    ) -> ReplayStore:
        """Create an empty, writable zarr format-3 store (holding its writer lock until :meth:`close`).

        Data arrays are created by the first :meth:`append_episode`; ``meta/episode_ends`` exists from
        the start (length 0), so an interrupted first append is also recognised as a tail.

        Args:
            path: Directory to create (not a ``.zip``).
            env_version: Environment id/version the demonstrations were recorded with.
            expert: Expert or teleop settings (JSON-serialisable).
            metadata: Any further JSON-serialisable information, stored as ``attrs["metadata"]``.
            overwrite: Replace an existing directory at ``path``; otherwise an existing path is an error.
            lock_timeout: Seconds to wait for another writer of ``path`` to finish.

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
            _CRC_ATTR: {},
        }
        lock = _WriterLock(root, lock_timeout)
        _clear_for_create(root, overwrite, lock)
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
        self._lock = lock
        self._read_structure()
        return self

    def close(self) -> None:
        """Release the writer lock and the underlying zip file, if any. Loaded arrays stay usable."""
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
            self.writable = False

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
        n_stored = int(ends_arr.shape[0])
        lost = self._missing_chunks(ends_arr, 0, n_stored)
        if lost and (len(lost) > 1 or lost[0] * ends_arr.chunks[0] != n_stored - 1):
            # only a chunk holding nothing but one just-reserved end may be absent
            raise DatasetError(self._chunk_message(ends_arr, lost[0], "is missing"))
        ends = np.asarray(self._read_array(ends_arr, 0, n_stored), dtype=np.int64)  # (E_stored,)
        if not self.writable and self._store is None:
            # a writer may have committed since the open: it writes the seeds and checksums before the
            # end, so attributes read after the ends hold at least as many episodes as they do
            self._group = zarr.open_group(self.path, mode="r")
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
            if extra_seeds > 1:  # an interrupted append leaves at most one seed past the committed ends
                raise DatasetError(
                    f"{where}: attrs['episode_seeds'] records {len(seeds_attr)} episodes but {_ENDS_PATH} "
                    f"commits only {ends.size}: episode ends were lost (missing or corrupt chunk of "
                    f"{_ENDS_PATH}?)"
                )
        crcs_attr = self._group.attrs.get(_CRC_ATTR)
        crcs: dict[str, list[int]] | None = None
        if crcs_attr is not None:
            if not isinstance(crcs_attr, dict):
                raise DatasetError(f"{where}: attrs['{_CRC_ATTR}'] must be a mapping of key -> list")
            crcs = {}
            for key in arrays if ends.size else ():
                listed = crcs_attr.get(key)
                if not isinstance(listed, list) or len(listed) < ends.size:
                    have = len(listed) if isinstance(listed, list) else 0
                    raise DatasetError(
                        f"{where}: attrs['{_CRC_ATTR}'] has {have} checksums for data/{key} but the store "
                        f"has {ends.size} episodes (written by a writer that skipped them?)"
                    )
                crcs[key] = [int(c) for c in listed[: ends.size]]
        elif ends.size and self.zarr_format == 3 and self._group.attrs.get("format") == FORMAT_NAME:
            logger.warning(
                "%s has no per-episode checksums (%s format 1): corrupt chunks cannot be detected; upgrade "
                "it with `python -m parapolicy.policy.data.replay_store upgrade %s`",
                where,
                FORMAT_NAME,
                where,
            )
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
        self._crcs = crcs

    def _chunk_file(self, arr: Any, coords: tuple[int, ...]) -> Path | None:
        """File of one chunk in a directory store (None for a zip)."""
        if self._store is not None:
            return None
        return self.path / arr.path / arr.metadata.encode_chunk_key(coords)

    def _missing_chunks(self, arr: Any, start: int, stop: int) -> list[int]:
        """Indices (along time) of chunks covering rows ``[start, stop)`` whose file is absent."""
        if stop <= start or self._store is not None:
            return []
        step = arr.chunks[0]
        trailing = [range(math.ceil(n / c)) for n, c in zip(arr.shape[1:], arr.chunks[1:], strict=True)]
        lost = []
        for i in range(start // step, (stop - 1) // step + 1):
            for rest in np.ndindex(*(len(r) for r in trailing)) if trailing else [()]:
                path = self._chunk_file(arr, (i, *rest))
                if path is not None and not path.exists():
                    lost.append(i)
                    break
        return lost

    def _chunk_message(self, arr: Any, index: int, problem: str, remedy: str = DAMAGED) -> str:
        step = arr.chunks[0]
        trailing = (0,) * (len(arr.shape) - 1)
        file = self._chunk_file(arr, (index, *trailing))
        rows = f"rows {index * step}-{min((index + 1) * step, arr.shape[0]) - 1}"
        where = f"{rows}, file {file}" if file else rows
        return f"{self.path}: {arr.path} chunk {index} ({where}) {problem}; {remedy}"

    def _read_array(self, arr: Any, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of ``arr``; a chunk that cannot be decoded is named, not a codec error."""
        try:
            return np.asarray(arr[start:stop])
        except (RuntimeError, ValueError, TypeError, OSError) as err:
            step = arr.chunks[0]
            for i in range(start // step, (stop - 1) // step + 1):  # find the broken chunk
                try:
                    arr[i * step : min((i + 1) * step, arr.shape[0])]
                except (RuntimeError, ValueError, TypeError, OSError):
                    raise DatasetError(self._chunk_message(arr, i, f"is corrupt ({err})")) from err
            raise DatasetError(f"{self.path}: cannot read {arr.path} rows {start}-{stop - 1}: {err}") from err

    def _verify(self, key: str, start: int, values: np.ndarray) -> None:
        """Check the rows read against the commit's checksums (or, for legacy stores, chunk presence)."""
        arr, stop = self._arrays[key], start + values.shape[0]
        if self._crcs is None:
            lost = self._missing_chunks(arr, start, stop)
            if lost:
                remedy = (  # without checksums an absent chunk may be one zarr skipped (all fill value)
                    f"the store lost it, or zarr skipped it for holding only the fill value: `python -m "
                    f"{__name__} upgrade {self.path}` reads such chunks as that value and adds checksums; "
                    "if it was lost, restore the store from a copy"
                )
                raise DatasetError(self._chunk_message(arr, lost[0], "is missing", remedy))
            return
        ends = self._episode_ends
        first = int(np.searchsorted(ends, start, side="right"))
        for ep in range(first, ends.size):
            lo = int(ends[ep - 1]) if ep else 0
            hi = int(ends[ep])
            if hi > stop:
                break
            if _crc(values[lo - start : hi - start]) != self._crcs[key][ep]:
                lost = self._missing_chunks(arr, lo, hi)
                if lost:
                    raise DatasetError(self._chunk_message(arr, lost[0], f"is missing (episode {ep})"))
                step = arr.chunks[0]
                raise DatasetError(
                    f"{self.path}: {arr.path} rows {lo}-{hi - 1} (episode {ep}, chunk(s) {lo // step}-"
                    f"{(hi - 1) // step}) do not match the checksum recorded when they were committed; the "
                    "store is damaged: restore it from a copy or re-collect it"
                )

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
        values = self._read_array(self._arrays[key], start, stop)  # (stop - start, ...)
        self._verify(key, start, values)
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
        if seed is not None and seed in self._seeds:
            raise DatasetError(
                f"{self.path} already holds an episode with seed {seed} (episode {self._seeds.index(seed)}); "
                "a store never holds the same seed twice"
            )
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
        self._commit(start + length, seed, {key: _crc(rows) for key, rows in values.items()})
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
            if np.issubdtype(dtype, np.integer) and v.size and not np.can_cast(v.dtype, dtype, "safe"):
                lo, hi, box = v.min(), v.max(), np.iinfo(dtype)  # a narrowing cast would wrap them
                if lo < box.min or hi > box.max:
                    raise DatasetError(
                        f"episode key {key!r} holds values {lo}..{hi}, outside the store's {dtype} range"
                    )
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

    def _commit(self, end: int, seed: int | None, crcs: Mapping[str, int]) -> None:
        """Record the seed and checksums, then the new episode end (steps 2 and 3 of an append)."""
        seeds = [*self._seeds, seed]
        old = self._crcs or {}
        new_crcs = {key: [*old.get(key, []), int(c)] for key, c in crcs.items()}
        self._group.attrs.update({"episode_seeds": seeds, _CRC_ATTR: new_crcs})  # one metadata write
        n = self.n_episodes
        self._ends_arr.resize((n + 1,))
        self._ends_arr[n] = end
        self._seeds = seeds
        self._crcs = new_crcs
        self._episode_ends = np.append(self._episode_ends, np.int64(end))

    def _upgrade(self) -> None:
        """Format 1 -> 2: checksum every committed episode as it is now. A chunk file that is absent is
        read as the fill value, with a warning naming it: zarr does not write a chunk that holds only the
        fill value, and format-1 stores were written that way, so absence there is no proof of loss."""
        crcs: dict[str, list[int]] = {}
        for key, arr in self._arrays.items():
            absent = self._missing_chunks(arr, 0, self.n_steps)
            if absent:
                logger.warning(
                    "%s: data/%s chunk(s) %s have no file; upgrading reads them as the fill value %s "
                    "(chunks zarr skipped for holding nothing else). If the store lost them instead, "
                    "restore it from a copy and do not use this upgrade",
                    self.path,
                    key,
                    absent,
                    arr.fill_value,
                )
            values = self._read_array(arr, 0, self.n_steps)
            crcs[key] = [_crc(values[self.episode_slice(i)]) for i in range(self.n_episodes)]
        self._group.attrs.update({_CRC_ATTR: crcs, "format_version": FORMAT_VERSION})
        self._crcs = crcs
        logger.info(
            "%s: upgraded to %s format %d (per-episode checksums)", self.path, FORMAT_NAME, FORMAT_VERSION
        )

    def record_run(self, record: Mapping[str, Any]) -> None:
        """Append one JSON record (e.g. a collection run's summary) to ``attrs["runs"]``.

        Raises:
            ReadOnlyStoreError: The store was opened read-only.
            DatasetError: ``record`` is not JSON-serialisable.
        """
        if not self.writable:
            raise ReadOnlyStoreError(
                f"{self.path} is open read-only; reopen it with mode='a' to record a run"
            )
        runs = list(self._group.attrs.get("runs") or [])
        runs.append(_check_json("run record", dict(record)))
        self._group.attrs["runs"] = runs

    @property
    def runs(self) -> list[dict[str, Any]]:
        """The run records appended with :meth:`record_run`, oldest first."""
        return list(self._group.attrs.get("runs") or [])


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m parapolicy.policy.data.replay_store upgrade PATH``: add checksums to a format-1 store."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m parapolicy.policy.data.replay_store")
    parser.add_argument("command", choices=["upgrade", "check"])
    parser.add_argument("path")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "upgrade":
            ReplayStore.open(args.path, keys=(), mode="a").close()
        store = ReplayStore.open(args.path, keys=())
        for key in store.keys:
            store.array(key)  # reads and verifies every committed row
    except ParapolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{args.path}: {store.n_episodes} episodes, {store.n_steps} steps, all checksums verified")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
