"""Collect expert demonstrations into a zarr demonstration store (no hydra).

Episodes run in ``workers`` processes, seeds ``start_seed, start_seed + 1, ...`` in order; results
are consumed in seed order, so the store's content depends only on the settings, never on timing.
Each episode stops at success, like the reference demonstrations. By default only successful
episodes are kept. A summary ``collect_info.json`` is written next to the store.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from parapolicy.envs import ENV_ID
from parapolicy.envs.expert import EpisodeRecord, ExpertConfig, run_expert_episode
from parapolicy.policy.data.replay_store import ReplayStore

LOWDIM_RECORD_KEYS = ("state", "keypoint", "n_contacts")


@dataclass
class CollectConfig:
    """Settings of `collect`."""

    n_episodes: int = 500
    """Episodes to keep."""
    start_seed: int = 0
    """First reference initial-state seed (evaluation uses 100000+; keep clear of them)."""
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
        if self.start_seed < 0 or self.max_attempts < 0:
            raise ValueError("start_seed and max_attempts must be >= 0")
        if self.keep not in ("success", "all"):
            raise ValueError(f"keep must be 'success' or 'all', got {self.keep!r}")
        if self.start_seed + self.attempt_limit > 100000:
            raise ValueError("collection seeds would reach the evaluation seeds (100000+): lower start_seed")

    @property
    def record_keys(self) -> tuple[str, ...]:
        """Keys recorded per step besides ``action``."""
        return (*LOWDIM_RECORD_KEYS, "img") if self.record_images else LOWDIM_RECORD_KEYS

    @property
    def attempt_limit(self) -> int:
        """Episodes tried at most."""
        return self.max_attempts or 2 * self.n_episodes + 20


def _episode(args: tuple[int, ExpertConfig, int, tuple[str, ...]]) -> EpisodeRecord:
    seed, expert_cfg, max_steps, keys = args
    return run_expert_episode(seed, expert_cfg, max_steps=max_steps, record_keys=keys)


def collect(cfg: CollectConfig, out_dir: Path) -> dict[str, Any]:
    """Collect demonstrations; returns the summary also written to ``collect_info.json``.

    Raises:
        FileExistsError: if the store exists and ``cfg.append`` is false.
    """
    path = Path(cfg.output_path)
    path = path if path.is_absolute() else Path(out_dir) / path
    expert_settings = dataclasses.asdict(cfg.expert)
    if path.exists():
        if not cfg.append:
            raise FileExistsError(f"{path} exists; pass append=true to add episodes to it")
        store = ReplayStore.open(path, keys=(), mode="a")
    else:
        store = ReplayStore.create(
            path,
            env_version=ENV_ID,
            expert=expert_settings,
            metadata={"collector": "parapolicy-collect", "keep": cfg.keep},
        )
    start = time.perf_counter()
    tried = kept = successes = kept_steps = 0
    seeds = range(cfg.start_seed, cfg.start_seed + cfg.attempt_limit)
    jobs = ((s, cfg.expert, cfg.max_steps, cfg.record_keys) for s in seeds)
    bar = tqdm(total=cfg.n_episodes, desc="collect", disable=not cfg.progress)
    ctx = mp.get_context("spawn")
    try:
        with ctx.Pool(cfg.workers) as pool:
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
    finally:
        bar.close()
        store.close()
    info = {
        "store": str(path),
        "episodes_tried": tried,
        "episodes_kept": kept,
        "success_rate": successes / max(tried, 1),
        "steps_kept": kept_steps,
        "mean_length": kept_steps / max(kept, 1),
        "wall_time_s": time.perf_counter() - start,
        "workers": cfg.workers,
        "start_seed": cfg.start_seed,
        "keep": cfg.keep,
        "expert": expert_settings,
    }
    (path.parent / "collect_info.json").write_text(json.dumps(info, indent=2))
    return info
