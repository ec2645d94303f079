"""`runtime.gc_freeze.frozen_heap`: what exists at entry is out of the collector's reach inside the
section, garbage made inside is still freed, nesting shares one freeze, and the timed sections of the
controller and of the bench run inside one."""

from __future__ import annotations

import gc
import weakref

import pytest

from parapolicy.policy.bench import SamplerBenchConfig, interleaved_ms_per_chunk
from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.control.evaluation import EvalConfig
from parapolicy.policy.control.rollout import ControlConfig, run_rollouts
from parapolicy.policy.runtime.gc_freeze import frozen_heap


class _Node:
    """A container the collector tracks (reference cycles are made of these)."""

    def __init__(self) -> None:
        self.other: _Node | None = None


def test_objects_existing_at_entry_are_frozen_and_handed_back_at_exit():
    before = _Node()
    assert gc.get_freeze_count() == 0
    with frozen_heap():
        assert gc.get_freeze_count() > 0
        assert gc.is_tracked(before)
        # frozen objects are in no generation: a full collection does not walk them
        assert not any(o is before for o in gc.get_objects())
        assert len(gc.get_objects()) < gc.get_freeze_count()
    assert gc.get_freeze_count() == 0
    assert any(o is before for o in gc.get_objects())


def test_cycles_made_inside_are_still_collected():
    with frozen_heap():
        a, b = _Node(), _Node()
        a.other, b.other = b, a  # a cycle: only the collector frees it
        alive = weakref.ref(a)
        del a, b
        gc.collect()
        assert alive() is None


def test_nested_sections_share_the_outermost_freeze():
    with frozen_heap():
        frozen = gc.get_freeze_count()
        with frozen_heap():
            pass
        assert gc.get_freeze_count() == frozen  # the inner exit did not unfreeze
    assert gc.get_freeze_count() == 0


def test_an_exception_inside_still_unfreezes():
    with pytest.raises(RuntimeError, match="boom"), frozen_heap():
        raise RuntimeError("boom")
    assert gc.get_freeze_count() == 0


def test_a_freeze_made_before_is_kept():
    """Checked on one object, not on `gc.get_freeze_count`: frozen objects still die by reference
    counting, so the count may fall whatever the section does."""
    mine = [[]]  # a container the collector tracks
    gc.freeze()  # the program's own, e.g. after start-up
    try:
        assert not _tracked_unfrozen(mine)
        with frozen_heap():
            assert not _tracked_unfrozen(mine)
        assert not _tracked_unfrozen(mine)  # not handed back: unfreeze cannot tell whose it is
    finally:
        gc.unfreeze()
    assert _tracked_unfrozen(mine)


def _tracked_unfrozen(obj: object) -> bool:
    """Whether ``obj`` is in one of the collector's generations (frozen objects are in none of them)."""
    return any(o is obj for o in gc.get_objects())


def _recording_freeze(policy) -> list[int]:
    """Make every denoiser call of ``policy`` record `gc.get_freeze_count` at that moment."""
    seen: list[int] = []
    inner = policy.denoise

    def denoise(x, t, cond):
        seen.append(gc.get_freeze_count())
        return inner(x, t, cond)

    policy.__dict__["denoise"] = denoise
    return seen


def test_the_controller_plans_inside_a_frozen_heap(tiny_policy):
    tiny_policy.set_sampler(SamplerConfig(num_inference_steps=10))
    seen = _recording_freeze(tiny_policy)
    try:
        ec = EvalConfig(n_episodes=1, batch_size=1, max_steps=16, max_videos=0, progress=False)
        run_rollouts(tiny_policy, ec, ControlConfig(mode="realtime_sim", warmup_plans=1))
    finally:
        del tiny_policy.__dict__["denoise"]
    assert seen and min(seen) > 0  # the warm-up plan and every plan of the episode
    assert gc.get_freeze_count() == 0


def test_the_interleaved_rounds_run_inside_a_frozen_heap(tiny_policy):
    seen = _recording_freeze(tiny_policy)
    try:
        cfg = SamplerBenchConfig(n_chunks=2, repeats=2, few_step=(), progress=False)
        samplers = [SamplerConfig(num_inference_steps=10)]
        interleaved_ms_per_chunk(tiny_policy, samplers, cfg)
    finally:
        del tiny_policy.__dict__["denoise"]
    # recording and warm-up run outside (before the freeze), the 2 rounds of 2 chunks of 10 calls inside
    assert seen[-40:] and min(seen[-40:]) > 0
    assert gc.get_freeze_count() == 0
