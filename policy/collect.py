"""Collect expert demonstrations into a zarr demonstration store (no hydra).

Episodes run in ``workers`` processes, seeds ``start_seed, start_seed + 1, ...`` in order; results
are consumed in seed order, so the store's content depends only on the settings, never on timing.
Each episode stops at success, like the reference demonstrations. By default only successful
episodes are kept. Appending continues after the store's largest seed unless ``start_seed`` is given;
a seed already in the store is never collected twice. The store is held with its writer lock for the
whole run (one writer per store). Each run's summary is written to ``collect_info.json`` in the run
folder and appended to the store's run records (``ReplayStore.runs``). Workers die with the parent
(Linux: ``PR_SET_PDEATHSIG``; elsewhere a watchdog thread), so a killed collect leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from parapolicy.envs import ENV_ID
from parapolicy.envs.expert import EpisodeRecord, ExpertConfig, run_expert_episode
from parapolicy.policy.data.replay_store import ReplayStore
from parapolicy.policy.errors import ConfigError, RunFolderError
from parapolicy.policy.run_dir import claim_run_dir, write_result

LOWDIM_RECORD_KEYS = ("state", "keypoint", "n_contacts")


@dataclass
class CollectConfig:
    """Settings of `collect`."""

    n_episodes: int = 500
    """Episodes to keep."""
    start_seed: int | None = None
    """First reference initial-state seed (evaluation uses 100000+; keep clear of them). Default: 0 for a
    new store, one past the store's largest seed when appending."""
    max_attempts: int = 0
    """Stop after this many episodes tried (0: 2 x n_episodes + 20)."""
    output_path: str = "pusht_expert.zarr"
    """The store; a relative path is relative to the run folder."""
    append: bool = False
    """Append to an existing store instead of refusing to touch it."""
    record_images: bool = False
    """Also record 96x96 RGB frames (`data/img`)."""
    keep: str = "success"
    """``success`` (reference-like demonstrations) or ``all``."""
    workers: int = 2
    """Worker processes."""
    max_steps: int = 300
    """Control steps per episode at most."""
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    """Planner settings."""
    progress: bool = True
    """Show a progress bar with the running success rate."""

    def __post_init__(self) -> None:
        if self.n_episodes < 1 or self.workers < 1 or self.max_steps < 1:
            raise ValueError("n_episodes, workers and max_steps must be >= 1")
        if (self.start_seed is not None and self.start_seed < 0) or self.max_attempts < 0:
            raise ValueError("start_seed and max_attempts must be >= 0")
        if self.keep not in ("success", "all"):
            raise ValueError(f"keep must be 'success' or 'all', got {self.keep!r}")
        _check_seed_range(self.start_seed or 0, self.attempt_limit)

    @property
    def record_keys(self) -> tuple[str, ...]:
        """Keys recorded per step besides ``action``."""
        return (*LOWDIM_RECORD_KEYS, "img") if self.record_images else LOWDIM_RECORD_KEYS

    @property
    def attempt_limit(self) -> int:
        """Episodes tried at most."""
        return self.max_attempts or 2 * self.n_episodes + 20


def _check_seed_range(start: int, limit: int) -> None:
    if start + limit > 100000:
        raise ConfigError(
            f"collection seeds {start}..{start + limit - 1} would reach the evaluation seeds (100000+): "
            "lower start_seed or n_episodes"
        )


def _die_with_parent(parent: int) -> None:
    """Pool initializer: end this worker as soon as the collecting process dies (no lingering, no noise)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the kernel kills us when the parent thread exits
    else:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.2)
            os._exit(0)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(0)


def _start_seed(cfg: CollectConfig, existing: list[int | None], path: Path) -> int:
    """Where this run starts: after the store's largest seed by default; refuse re-collecting seeds."""
    known = sorted({s for s in existing if s is not None})
    if cfg.start_seed is None:
        start = known[-1] + 1 if known else 0
    else:
        start = cfg.start_seed
        clash = [s for s in known if start <= s < start + cfg.attempt_limit]
        if clash:
            shown = ", ".join(map(str, clash[:5])) + (" ..." if len(clash) > 5 else "")
            raise ConfigError(
                f"start_seed={start} would re-collect seed(s) {shown} already in {path}; omit start_seed "
                f"to continue after seed {known[-1]}, or pass start_seed >= {known[-1] + 1}"
            )
    _check_seed_range(start, cfg.attempt_limit)
    return start


def _episode(args: tuple[int, ExpertConfig, int, tuple[str, ...]]) -> EpisodeRecord:
    seed, expert_cfg, max_steps, keys = args
    return run_expert_episode(seed, expert_cfg, max_steps=max_steps, record_keys=keys)


def _open_store(cfg: CollectConfig, path: Path, expert_settings: dict[str, Any]) -> ReplayStore:
    """The store at ``path``: opened for appending (``cfg.append``; refused otherwise) or created."""
    if path.exists():
        if not cfg.append:
            raise RunFolderError(f"{path} exists; pass append=true to add episodes to it")
        return ReplayStore.open(path, keys=(), mode="a")
    return ReplayStore.create(
        path,
        env_version=ENV_ID,
        expert=expert_settings,
        metadata={"collector": "parapolicy-collect", "keep": cfg.keep},
    )


def _run_experts(
    cfg: CollectConfig, store: ReplayStore, start_seed: int, bar: tqdm
) -> tuple[int, int, int, int]:
    """Run the expert on seeds from ``start_seed`` in ``cfg.workers`` processes and append the
    episodes ``cfg.keep`` keeps, until ``cfg.n_episodes`` are kept or ``cfg.attempt_limit`` seeds
    are tried; returns (episodes tried, kept, successful, steps kept)."""
    tried = kept = successes = kept_steps = 0
    seeds = range(start_seed, start_seed + cfg.attempt_limit)
    jobs = ((s, cfg.expert, cfg.max_steps, cfg.record_keys) for s in seeds)
    ctx = mp.get_context("spawn")
    with ctx.Pool(cfg.workers, initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
        for rec in pool.imap(_episode, jobs, chunksize=1):
            tried += 1
            successes += rec.success
            if rec.success or cfg.keep == "all":
                store.append_episode(rec.data, seed=rec.seed)
                kept += 1
                kept_steps += rec.n_steps
                bar.update(1)
            bar.set_postfix(success=f"{successes}/{tried} ({100.0 * successes / tried:.0f}%)")
            if kept >= cfg.n_episodes:
                pool.terminate()
                break
    return tried, kept, successes, kept_steps


def collect(cfg: CollectConfig, out_dir: Path) -> dict[str, Any]:
    """Collect demonstrations; returns the summary also written to ``out_dir/collect_info.json``.

    Raises:
        RunFolderError: ``out_dir`` already holds a ``collect_info.json``.
        FileExistsError: if the store exists and ``cfg.append`` is false.
        StoreLockedError: another process is writing the store.
        ConfigError: an explicit ``start_seed`` would re-collect a seed the store holds.
    """
    out_dir = claim_run_dir(out_dir, ["collect_info.json"], "parapolicy-collect")
    path = Path(cfg.output_path)
    path = path if path.is_absolute() else out_dir / path
    expert_settings = dataclasses.asdict(cfg.expert)
    store = _open_store(cfg, path, expert_settings)
    try:
        start_seed = _start_seed(cfg, store.episode_seeds, path)
    except BaseException:
        store.close()
        raise
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    start = time.perf_counter()
    bar = tqdm(total=cfg.n_episodes, desc="collect", disable=not cfg.progress)
    info: dict[str, Any] = {}
    try:
        tried, kept, successes, kept_steps = _run_experts(cfg, store, start_seed, bar)
        info = {
            "store": str(path),
            "run_dir": str(out_dir),
            "started_at": started_at,
            "episodes_tried": tried,
            "episodes_kept": kept,
            "success_rate": successes / max(tried, 1),
            "steps_kept": kept_steps,
            "mean_length": kept_steps / max(kept, 1),
            "wall_time_s": time.perf_counter() - start,
            "workers": cfg.workers,
            "start_seed": start_seed,
            "seeds_tried": [start_seed, start_seed + tried - 1] if tried else [],
            "store_episodes_after": store.n_episodes,
            "keep": cfg.keep,
            "expert": expert_settings,
        }
        store.record_run(info)
    finally:
        bar.close()
        store.close()
    write_result(out_dir / "collect_info.json", info)
    return info
