"""Reliability of demonstration stores (issue 15, items 2, 3 and 9): missing or corrupt chunks and broken
metadata are named, never read as zeros; one writer per store; appends never duplicate seeds; each
collection run is recorded."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import console_script

from parapolicy.policy.collect import CollectConfig, collect
from parapolicy.policy.data.dataset import PushTLowdimDataset
from parapolicy.policy.data.replay_store import DatasetError, ReplayStore, StoreLockedError
from parapolicy.policy.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("state", "action", "keypoint")


def episode(n: int, first: int) -> dict[str, np.ndarray]:
    rows = np.arange(first, first + n, dtype=np.float32)[:, None]
    return {
        "state": rows + np.arange(5, dtype=np.float32),
        "action": np.repeat(rows * 2 + 1, 2, axis=1),
        "keypoint": np.repeat(rows[:, None], 9, axis=1).repeat(2, axis=2),
    }


def make_store(path: Path, lengths=(30, 31, 32), seeds=None) -> Path:
    store = ReplayStore.create(path)
    first = 0
    for i, n in enumerate(lengths):
        store.append_episode(episode(n, first), seed=i if seeds is None else seeds[i])
        first += n
    store.close()
    return path


# --------------------------------------------------------------------------------------- item 2
def test_deleted_chunk_is_refused_naming_array_and_chunk(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    (path / "data" / "action" / "c" / "0" / "0").unlink()
    with pytest.raises(DatasetError, match=r"data/action chunk 0 \(rows 0-.*c/0/0\) is missing"):
        ReplayStore.open(path, keys=("state", "action"))
    with pytest.raises(DatasetError, match="data/action chunk 0"):
        PushTLowdimDataset(path)


def test_train_on_a_store_with_a_deleted_chunk_fails_in_one_line(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    (path / "data" / "action" / "c" / "0" / "0").unlink()
    proc = subprocess.run(
        [
            console_script("parapolicy-train"),
            f"dataset_path={path}",
            "num_steps=1",
            f"hydra.run.dir={tmp_path / 'r'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 5, proc.stderr[-2000:]
    assert "data/action chunk 0" in proc.stderr and "is missing" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_corrupt_chunk_is_named_not_a_codec_error(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    (path / "data" / "state" / "c" / "0" / "0").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DatasetError, match=r"data/state chunk 0 .* is corrupt"):
        ReplayStore.open(path, keys=("state",))


def test_chunk_rewritten_with_other_values_fails_its_checksum(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    zarr.open_group(path, mode="r+")["data/action"][40] = [7.0, 7.0]  # decodable, but not what was committed
    with pytest.raises(
        DatasetError, match=r"data/action rows 30-60 \(episode 1, chunk\(s\) 0-0\) do not match"
    ):
        ReplayStore.open(path, keys=("action",))
    ReplayStore.open(path, keys=("state",))  # other arrays still read


def test_deleted_episode_ends_chunk_is_refused(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    (path / "meta" / "episode_ends" / "c" / "0").unlink()
    with pytest.raises(DatasetError, match=r"meta/episode_ends chunk 0 .* is missing"):
        ReplayStore.open(path, keys=())


@pytest.mark.parametrize("where", ["zarr.json", "data/action/zarr.json"])
def test_garbage_zarr_json_names_the_file(tmp_path, where):
    path = make_store(tmp_path / "s.zarr")
    (path / where).write_text("{not json")
    with pytest.raises(DatasetError, match=rf"{path / where}: unreadable zarr metadata \(JSONDecodeError"):
        ReplayStore.open(path)


def test_legacy_store_without_checksums_warns_and_still_catches_missing_chunks(tmp_path, caplog):
    path = make_store(tmp_path / "s.zarr")
    group = zarr.open_group(path, mode="r+")
    group.attrs.update({"format_version": 1})
    del group.attrs["episode_crc32"]
    with caplog.at_level(logging.WARNING):
        store = ReplayStore.open(path, keys=KEYS)
    assert "no per-episode checksums" in caplog.text and "upgrade" in caplog.text
    assert store.n_episodes == 3
    (path / "data" / "action" / "c" / "0" / "0").unlink()
    with pytest.raises(
        DatasetError, match="data/action chunk 0.*is missing; the store lost it, or zarr skipped"
    ):
        ReplayStore.open(path, keys=("action",))


def test_a_legacy_store_whose_all_zero_chunks_zarr_skipped_upgrades_reading_them_as_zeros(tmp_path, caplog):
    """zarr writes no chunk that holds only the fill value: a format-1 store (no checksums) with an all-zero
    key has no file for it. Reading it is refused (a lost chunk looks the same), upgrading names it and
    reads it as the fill value."""
    path = tmp_path / "s.zarr"
    store = ReplayStore.create(path)
    rng = np.random.default_rng(0)
    for seed in range(2):
        store.append_episode({"state": rng.uniform(0, 512, (5, 5)), "done": np.zeros((5, 1))}, seed=seed)
    store.close()
    group = zarr.open_group(path, mode="r+")
    group.attrs.update({"format_version": 1})
    del group.attrs["episode_crc32"]
    assert not (path / "data" / "done" / "c").exists()  # zarr skipped the all-zero chunk
    with pytest.raises(
        DatasetError, match=r"data/done chunk 0 .*is missing; the store lost it, or zarr skipped"
    ):
        ReplayStore.open(path, keys=("done",))
    with caplog.at_level(logging.WARNING):
        ReplayStore.open(path, keys=(), mode="a").close()  # what the upgrade command does
    assert "data/done chunk(s) [0] have no file; upgrading reads them as the fill value 0.0" in caplog.text
    upgraded = ReplayStore.open(path, keys=("done",))
    assert upgraded.attrs["format_version"] == 2 and not upgraded["done"].any()


def test_upgrade_tool_adds_checksums(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    group = zarr.open_group(path, mode="r+")
    group.attrs.update({"format_version": 1})
    del group.attrs["episode_crc32"]
    proc = subprocess.run(
        [sys.executable, "-m", "parapolicy.policy.data.replay_store", "upgrade", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "3 episodes, 93 steps, all checksums verified" in proc.stdout
    attrs = ReplayStore.open(path, keys=()).attrs
    assert attrs["format_version"] == 2 and len(attrs["episode_crc32"]["action"]) == 3


@pytest.mark.parametrize("name", ["pusht_expert.zarr", "pusht_multimodal.zarr"])
def test_shipped_stores_open_without_warnings(caplog, name):
    """Both shipped stores carry per-episode checksums (format 2), so reading them warns of nothing."""
    with caplog.at_level(logging.WARNING):
        store = ReplayStore.open(ROOT / "assets" / name, keys=KEYS)
    assert store.attrs["format_version"] == 2 and store.n_episodes > 0
    assert caplog.text == ""


def test_an_unwritable_place_is_refused_in_one_line_naming_it(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DatasetError, match=r"cannot write a store at .*file/s\.zarr: its lock file"):
        ReplayStore.create(blocker / "s.zarr")
    assert blocker.read_text() == "not a directory"


# --------------------------------------------------------------------------------------- item 3
HOLD = textwrap.dedent(
    """
    import sys, time
    from parapolicy.policy.data.replay_store import ReplayStore
    store = ReplayStore.open(sys.argv[1], keys=(), mode="a")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    store.close()
    """
)


def hold_writer(path: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_fails_clearly(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    holder = hold_writer(path, 30)
    try:
        with pytest.raises(
            StoreLockedError, match=rf"{path} is being written by pid {holder.pid}.*one writer"
        ):
            ReplayStore.open(path, keys=(), mode="a")
        with pytest.raises(StoreLockedError, match="after waiting 0.3 s"):
            ReplayStore.open(path, keys=(), mode="a", lock_timeout=0.3)
        ReplayStore.open(path, keys=KEYS)  # readers are never blocked
    finally:
        holder.kill()
        holder.wait()
    ReplayStore.open(path, keys=(), mode="a").close()  # the lock died with its process


def test_waiting_writer_gets_the_store_when_the_first_finishes(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    holder = hold_writer(path, 0.5)
    store = ReplayStore.open(path, keys=(), mode="a", lock_timeout=30)
    store.append_episode(episode(3, 93), seed=3)
    store.close()
    holder.wait()
    assert ReplayStore.open(path, keys=()).episode_seeds == [0, 1, 2, 3]


APPEND = textwrap.dedent(
    """
    import sys
    import numpy as np
    from parapolicy.policy.data.replay_store import ReplayStore
    first = int(sys.argv[2])
    for seed in range(first, first + 5):
        store = ReplayStore.open(sys.argv[1], keys=(), mode="a", lock_timeout=60)
        rows = np.full((4, 1), seed, np.float32)
        store.append_episode({"state": np.repeat(rows, 5, 1), "action": np.repeat(rows, 2, 1)}, seed=seed)
        store.close()
    """
)


def test_concurrent_appenders_lose_nothing(tmp_path):
    path = tmp_path / "s.zarr"
    store = ReplayStore.create(path)
    store.close()
    procs = [subprocess.Popen([sys.executable, "-c", APPEND, str(path), str(first)]) for first in (0, 100)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    store = ReplayStore.open(path, keys=("state", "action"))
    assert sorted(store.episode_seeds) == [*range(5), *range(100, 105)]
    assert store.n_steps == 40


def test_store_refuses_a_duplicate_seed(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    store = ReplayStore.open(path, keys=(), mode="a")
    with pytest.raises(DatasetError, match="already holds an episode with seed 1 \\(episode 1\\)"):
        store.append_episode(episode(3, 93), seed=1)
    store.close()


def test_collect_append_continues_after_the_largest_seed_and_refuses_duplicates(tmp_path):
    store_path = tmp_path / "demo.zarr"
    cfg = {"n_episodes": 1, "workers": 1, "progress": False, "output_path": str(store_path)}
    first = collect(CollectConfig(start_seed=5, **cfg), tmp_path / "run1")
    second = collect(CollectConfig(append=True, **cfg), tmp_path / "run2")  # default start_seed
    assert second["start_seed"] == first["seeds_tried"][1] + 1
    with pytest.raises(ConfigError, match=r"start_seed=0 would re-collect seed\(s\) 5.*omit start_seed"):
        collect(CollectConfig(append=True, start_seed=0, **cfg), tmp_path / "run3")
    with ReplayStore.open(store_path, keys=()) as store:
        seeds = store.episode_seeds
        runs = store.runs
    assert len(seeds) == len(set(seeds)) == 2
    # item 9: one record per run, in its run folder and in the store
    assert [r["run_dir"] for r in runs] == [str(tmp_path / "run1"), str(tmp_path / "run2")]
    assert (
        json.loads((tmp_path / "run2" / "collect_info.json").read_text())["start_seed"]
        == second["start_seed"]
    )
    assert json.loads((tmp_path / "run1" / "collect_info.json").read_text())["start_seed"] == 5


# --------------------------------------------------------------------------------------- item 9
def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_collect_leaves_no_workers(tmp_path):
    proc = subprocess.Popen(
        [
            console_script("parapolicy-collect"),
            "n_episodes=50",
            "workers=2",
            "progress=false",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    kids: list[int] = []
    while time.monotonic() < deadline and len(kids) < 2:
        time.sleep(0.5)
        kids = _children(proc.pid)
    assert len(kids) >= 2, "the pool never started"
    time.sleep(2.0)  # workers busy in episodes
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.1)
    assert not any(_alive(k) for k in kids), "pool workers outlived the killed collect"
    assert "BrokenPipeError" not in proc.stderr.read()
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
