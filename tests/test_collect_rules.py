"""parapolicy-collect's rules against hand counts, with an in-process stand-in for the expert's worker
pool (even seeds succeed, an episode of seed s has 10 + s % 3 steps): which episodes are kept, the
summary figures, and the seed boundaries."""

from __future__ import annotations

import types

import numpy as np
import pytest

from parapolicy.policy import collect
from parapolicy.policy.errors import ConfigError


def _episode(job):
    seed = job[0]
    n = 10 + seed % 3
    data = {
        "action": np.zeros((n, 2), np.float32),
        "state": np.zeros((n, 5), np.float32),
        "keypoint": np.zeros((n, 9, 2), np.float32),
        "n_contacts": np.zeros((n, 1), np.int64),
    }
    return types.SimpleNamespace(seed=seed, success=seed % 2 == 0, n_steps=n, data=data)


class _Pool:
    def __init__(self, *args, **kwargs) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *args) -> None:
        pass

    def imap(self, fn, jobs, chunksize=1):
        return (_episode(job) for job in jobs)

    def terminate(self) -> None:
        pass


@pytest.fixture
def fake_pool(monkeypatch):
    context = types.SimpleNamespace(Pool=_Pool)
    monkeypatch.setattr(collect, "mp", types.SimpleNamespace(get_context=lambda name: context))


def test_keep_all_keeps_failures(fake_pool, tmp_path):
    cfg = collect.CollectConfig(n_episodes=3, start_seed=0, workers=1, progress=False, keep="all")
    info = collect.collect(cfg, tmp_path / "a")
    assert (info["episodes_tried"], info["episodes_kept"]) == (3, 3)  # seeds 0, 1, 2
    assert info["success_rate"] == pytest.approx(2 / 3)  # seeds 0 and 2


def test_keep_success_tries_until_enough_and_summarises_kept_and_tried(fake_pool, tmp_path):
    cfg = collect.CollectConfig(n_episodes=2, start_seed=0, workers=1, progress=False)
    info = collect.collect(cfg, tmp_path / "b")
    assert (info["episodes_tried"], info["episodes_kept"]) == (3, 2)  # seed 1 fails
    assert info["success_rate"] == pytest.approx(2 / 3)  # over the tried episodes
    assert info["mean_length"] == pytest.approx((10 + 12) / 2)  # over the kept ones


def test_seed_boundaries(tmp_path):
    cfg = collect.CollectConfig(n_episodes=2, start_seed=5, workers=1, progress=False)
    with pytest.raises(ConfigError, match=r"start_seed=5 would re-collect seed\(s\) 5 already in"):
        collect._start_seed(cfg, [5], tmp_path / "s")
    with pytest.raises(ConfigError, match=r"seeds 99991\.\.100000 would reach the evaluation seeds"):
        collect._check_seed_range(99991, 10)
    collect._check_seed_range(99990, 10)  # 99990 .. 99999 does not
