"""Multimodal expert and strategy labels: the planner mode still reproduces the shipped dataset, the
multimodal mode is deterministic per strategy seed, draws both sides and its labelled first push matches
the drawn side; the labeller on synthetic states; config validation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from parapolicy.envs.expert import ExpertConfig, run_expert_episode
from parapolicy.envs.expert_multimodal import EpisodeStrategy, MultimodalConfig, contact_side
from parapolicy.envs.expert_paths import make_contacts
from parapolicy.envs.strategy import first_push, shares
from parapolicy.policy.data.replay_store import ReplayStore

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "pusht_expert.zarr"
START = 93  # a start state the planner solves in 29 steps (shipped episode 93)
RIGHT, LEFT = 0, 1  # strategy seeds drawing the right / the left side (checked below)


@pytest.fixture(scope="module")
def multimodal_records():
    cfg = ExpertConfig(mode="multimodal")
    return {k: run_expert_episode(START, cfg, record_keys=("state",), strategy_seed=k) for k in (RIGHT, LEFT)}


def test_planner_mode_reproduces_the_shipped_episode():
    with ReplayStore.open(SHIPPED, keys=("action", "state")) as store:
        i = int(np.flatnonzero(np.asarray(store.episode_seeds) == START)[0])
        shipped = store.get_episode(i)
    rec = run_expert_episode(START, ExpertConfig(), record_keys=("state",), strategy_seed=123)
    assert rec.side == ""
    np.testing.assert_array_equal(rec.data["action"], shipped["action"])
    np.testing.assert_array_equal(rec.data["state"], shipped["state"])


def test_strategy_draws_are_deterministic_and_cover_both_sides():
    cfg = MultimodalConfig()
    assert EpisodeStrategy(cfg, RIGHT).side == "right"
    assert EpisodeStrategy(cfg, LEFT).side == "left"
    sides = [EpisodeStrategy(cfg, k).side for k in range(200)]
    assert 0.35 < sides.count("left") / len(sides) < 0.65
    a, b = EpisodeStrategy(cfg, 7), EpisodeStrategy(cfg, 7)
    base = ExpertConfig()
    assert [a.decision(base) for _ in range(5)] == [b.decision(base) for _ in range(5)]
    assert EpisodeStrategy(MultimodalConfig(left_probability=1.0), RIGHT).side == "left"


def test_decision_varies_speed_detour_and_pause_within_bounds():
    strategy = EpisodeStrategy(MultimodalConfig(pause_probability=0.5), 3)
    base = ExpertConfig()
    draws = [strategy.decision(base) for _ in range(50)]
    speeds = {cfg.approach_speed for cfg, _ in draws}
    assert len(speeds) == 50 and all(0.6 * 25.0 <= s <= 25.0 for s in speeds)
    assert all(120.0 <= cfg.detour_radius <= 160.0 for cfg, _ in draws)
    pauses = [p for _, p in draws]
    assert 0 in pauses and max(pauses) <= 4 and any(p > 0 for p in pauses)
    assert all(cfg.fine_push_speed == base.fine_push_speed for cfg, _ in draws)


def test_contact_sides_split_the_outline_symmetrically():
    contacts = make_contacts(10.0, 18.0, 3)
    sides = [contact_side(c) for c in contacts]
    assert sides.count("left") == sides.count("right") > 10
    assert all(abs(c[0]) <= 8.0 for c, s in zip(contacts, sides, strict=True) if s is None)


def test_multimodal_episodes_succeed_follow_their_side_and_differ(multimodal_records):
    right, left = multimodal_records[RIGHT], multimodal_records[LEFT]
    assert right.success and left.success
    assert (right.side, left.side) == ("right", "left")
    assert first_push(right.data["state"]).side == "right"
    assert first_push(left.data["state"]).side == "left"
    assert right.n_steps != left.n_steps or not np.array_equal(right.data["action"], left.data["action"])
    again = run_expert_episode(
        START, ExpertConfig(mode="multimodal"), record_keys=("state",), strategy_seed=RIGHT
    )
    np.testing.assert_array_equal(again.data["action"], right.data["action"])


def test_strategy_seed_defaults_to_the_episode_seed():
    rec = run_expert_episode(START, ExpertConfig(mode="multimodal"), max_steps=3)
    assert rec.strategy_seed == START and rec.side == EpisodeStrategy(MultimodalConfig(), START).side


# --------------------------------------------------------------------------------------------------
# labeller on synthetic states: T at angle 0 with its origin at (256, 200); the bar spans x 196..316
def _states(agent_path, block_moves_from: int) -> np.ndarray:
    rows = []
    for t, (ax, ay) in enumerate(agent_path):
        bx = 256.0 + (2.0 * (t - block_moves_from + 1) if t >= block_moves_from else 0.0)
        rows.append((ax, ay, bx, 200.0, 0.0))
    return np.array(rows)


def test_first_push_labels_side_and_part():
    # approach the left end of the bar from the left, push right from step 3
    path = [(100.0, 215.0), (150.0, 215.0), (180.0, 215.0), (183.0, 215.0), (185.0, 215.0)]
    push = first_push(_states(path, block_moves_from=4))
    assert (push.side, push.part, push.step) == ("left", "bar", 4)
    assert push.local[0] < -60.0
    # the mirror image: from the right, below the bar next to the stem (block-frame y 45)
    mirror = [(512.0 - x, y + 30.0) for x, y in [(150.0, 215.0), (200.0, 215.0), (226.0, 215.0)]]
    mirror_states = _states(mirror, block_moves_from=2)
    mirror_states[2, 2] = 256.0 - 1.0  # pushed towards -x
    assert first_push(mirror_states).side == "right"
    assert first_push(mirror_states).part == "stem"


def test_a_push_right_after_the_first_clear_state_counts():
    """Clear at step 0, touching the bar's left end with the block moved at step 1: that is the first
    push, not a later one from the right."""
    path = [(176.0, 271.0), (183.0, 271.0), (183.0, 200.0), (340.0, 271.0), (330.0, 271.0)]
    states = np.array([(ax, ay, 256.0, 256.0, 0.0) for ax, ay in path])
    states[1:4, 2] = 258.0  # the block moved between steps 0 and 1, and back at step 4
    push = first_push(states)
    assert (push.side, push.part, push.step) == ("left", "bar", 1)


def test_first_push_ignores_a_start_inside_the_block_and_reports_none():
    inside = [(256.0, 210.0), (256.0, 212.0), (256.0, 214.0)]  # block moves, but the pusher was never clear
    assert first_push(_states(inside, block_moves_from=1)).side == "none"
    assert first_push(_states([(50.0, 50.0)] * 5, block_moves_from=99)).step == -1
    with pytest.raises(ValueError, match="shape"):
        first_push(np.zeros((4, 4)))


def test_shares():
    assert shares(["left", "left", "right", "none"]) == {
        "left": 0.5,
        "right": 0.25,
        "centre": 0.0,
        "none": 0.25,
    }
    with pytest.raises(ValueError, match="at least one"):
        shares([])
    with pytest.raises(ValueError, match="unknown label"):
        shares(["up"])


# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "human"}, "mode"),
        ({"multimodal": {"left_probability": 1.5}}, "left_probability"),
        ({"multimodal": {"opening_pushes": (3, 1)}}, "opening_pushes"),
        ({"multimodal": {"opening_pushes": (0.5, 1)}}, "opening_pushes"),
        ({"multimodal": {"speed_scale": (0.0, 1.0)}}, "speed_scale"),
        ({"multimodal": {"detour_radius": (50.0, 120.0)}}, "detour_radius"),
        ({"multimodal": {"max_pause": -1}}, "max_pause"),
        ({"multimodal": 3}, "MultimodalConfig"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExpertConfig(**kwargs)


def test_config_accepts_lists_and_mappings():
    cfg = ExpertConfig(mode="multimodal", multimodal={"speed_scale": [0.5, 0.9], "opening_pushes": [2, 2]})
    assert cfg.multimodal.speed_scale == (0.5, 0.9) and cfg.multimodal.opening_pushes == (2, 2)
    assert math.isclose(ExpertConfig().multimodal.choice_slack, 0.3)
