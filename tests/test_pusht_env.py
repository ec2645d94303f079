"""PushT environment: reference numbers, Gymnasium contract, determinism, bad input."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from parapolicy.envs import (
    ENV_ID,
    GOAL_POSE,
    KEYPOINTS_LOCAL,
    OBS_TYPES,
    PushTEnv,
    coverage,
    reference_initial_state,
)
from parapolicy.envs.geometry import T_AREA, corners_world, t_polygon
from parapolicy.envs.physics import BLOCK_MOMENT, PushTWorld, forecast_pusher

GOLDEN_STARTS = [
    # seed, sampled [ax, ay, bx, by, theta], observation after the legacy set [ax, ay, bx, by, theta mod 2pi]
    (0, [222, 97, 217, 292, 3.0080], [222, 97, 222.994, 381.599, 3.008]),
    (1, [87, 285, 172, 355, -6.5957], [87, 285, 158.163, 357.180, 5.971]),
    (100000, [235, 124, 335, 128, -0.9049], [235, 124, 299.613, 145.202, 5.378]),
    (100001, [365, 182, 275, 280, -1.0981], [365, 182, 234.934, 304.513, 5.185]),
    (100002, [159, 417, 295, 339, -6.1146], [159, 417, 302.550, 339.638, 0.169]),
]


def make(obs_type: str = "state", **kwargs) -> gym.Env:
    return gym.make(ENV_ID, obs_type=obs_type, disable_env_checker=True, **kwargs)


@pytest.mark.parametrize(("seed", "sampled", "observed"), GOLDEN_STARTS)
def test_reference_initial_states_are_golden(seed, sampled, observed):
    state = reference_initial_state(seed)
    np.testing.assert_allclose(state, sampled, atol=5e-5)
    env = make()
    obs, info = env.reset(options={"reset_to_state": state})
    np.testing.assert_allclose(obs, observed, atol=5e-4)
    assert info["block_pose"][2] == pytest.approx(state[4])  # info keeps the raw angle


def test_legacy_order_moves_origin_about_the_centre_of_gravity():
    env = make()
    obs, _ = env.reset(options={"reset_to_state": [0, 10, 20, 30, 1.0]})
    np.testing.assert_allclose(obs, [0, 10, 57.866, 50.686, 1.0], atol=1e-3)
    obs, _ = env.reset(options={"reset_to_state": [0, 10, 200, 300, 1.0], "legacy": False})
    np.testing.assert_allclose(obs[2:], [200, 300, 1.0], atol=1e-9)


def test_block_constants_and_quasi_static_block():
    world = PushTWorld()
    assert world.block.mass == 1.0
    assert world.block.moment == BLOCK_MOMENT == 3000.0
    assert tuple(world.block.center_of_gravity) == (0.0, 45.0)
    assert world.space.damping == 0.0 and tuple(world.space.gravity) == (0.0, 0.0)
    assert all(shape.friction == 0.0 and shape.elasticity == 0.0 for shape in world.space.shapes)
    world.block.velocity = (100.0, 0.0)
    world.space.step(0.01)
    assert tuple(world.block.velocity) == (0.0, 0.0)


def test_block_does_not_move_without_contact():
    env = make()
    env.reset(options={"reset_to_state": [50, 50, 300, 300, 0.5]})
    before = env.unwrapped.world.block_pose
    for _ in range(5):
        env.step(np.array([60.0, 60.0], dtype=np.float32))
    np.testing.assert_array_equal(env.unwrapped.world.block_pose, before)


def test_pusher_passes_through_walls():
    env = make()
    env.reset(options={"reset_to_state": [100, 256, 400, 400, 0.0]})
    for _ in range(40):
        obs, *_ = env.step(np.array([0.0, 256.0], dtype=np.float32))
    assert obs[0] < 0.5  # walls are at x = 5 +- 2, the kinematic pusher ignores them


def test_pd_response_to_a_50px_step():
    env = make()
    env.reset(options={"reset_to_state": [256, 100, 256, 350, 0.0]})
    ys = [env.step(np.array([256.0, 150.0], dtype=np.float32))[0][1] - 100.0 for _ in range(5)]
    np.testing.assert_allclose(ys, [14.8, 30.8, 40.4, 45.4, 47.8], atol=0.05)


def test_pusher_forecast_is_the_worlds_own_path_through_contact():
    """`forecast_pusher` (the controller's forecast of its own state) equals the pusher's real path,
    bit for bit, while it pushes the block: the pusher is kinematic, contacts never move it."""
    env = PushTEnv(obs_type="state")
    env.reset(options={"reset_to_state": [256.0, 150.0, 256.0, 300.0, 0.0]})
    targets = np.array([[256.0, 260.0 + 10 * i] for i in range(12)])  # drive down into the block
    w = env.world
    forecast = forecast_pusher(w.agent_position, w.agent_velocity, targets)  # (12, 2)
    real, contacts = [], 0
    for t in targets:
        obs, _, _, _, info = env.step(t)
        real.append(obs[:2])
        contacts += info["n_contacts"]
    assert contacts > 0  # it did push the block
    np.testing.assert_array_equal(forecast, np.array(real))


def test_coverage_reference_values():
    assert coverage(GOAL_POSE) == pytest.approx(1.0, abs=1e-12)
    assert t_polygon(GOAL_POSE).area == pytest.approx(T_AREA)
    for offset, expected in [(1, 0.973), (2, 0.947), (3, 0.921), (5, 0.869), (8, 0.795)]:
        assert coverage(GOAL_POSE + [offset, 0, 0]) == pytest.approx(expected, abs=5e-4)
        assert coverage(GOAL_POSE + [0, offset, 0]) == pytest.approx(expected, abs=5e-4)
    for dtheta, expected in [(0.02, 0.966), (0.05, 0.916), (0.10, 0.834)]:
        assert coverage(GOAL_POSE + [0, 0, dtheta]) == pytest.approx(expected, abs=5e-4)
    assert coverage(np.array([60.0, 60.0, 0.0])) == 0.0


def test_success_terminates_with_full_reward():
    env = make()
    _, info = env.reset(options={"reset_to_state": [450, 450, *GOAL_POSE], "legacy": False})
    assert info["is_success"] and info["coverage"] == pytest.approx(1.0)
    _, reward, terminated, truncated, info = env.step(np.array([450.0, 450.0], dtype=np.float32))
    assert reward == 1.0 and terminated and not truncated and info["is_success"]
    env.reset(options={"reset_to_state": [450, 450, 258, 256, GOAL_POSE[2]], "legacy": False})
    _, reward, terminated, _, info = env.step(np.array([450.0, 450.0], dtype=np.float32))
    assert not terminated and reward == pytest.approx(0.9468 / 0.95, abs=1e-3)


def test_time_limit_truncates_at_300_steps():
    env = make()
    env.reset(seed=3)
    for step in range(300):
        _, _, terminated, truncated, _ = env.step(np.array([30.0, 30.0], dtype=np.float32))
        assert not terminated
        assert truncated == (step == 299)


def test_observation_variants_agree_with_the_state():
    envs = {ot: make(ot) for ot in OBS_TYPES}
    start = {"reset_to_state": reference_initial_state(100003)}
    obs = {ot: env.reset(options=start)[0] for ot, env in envs.items()}
    state = obs["state"]
    pose = envs["state"].unwrapped.world.block_pose
    rot = np.array([[math.cos(pose[2]), -math.sin(pose[2])], [math.sin(pose[2]), math.cos(pose[2])]])
    np.testing.assert_allclose(obs["keypoints"][:18].reshape(9, 2), KEYPOINTS_LOCAL @ rot.T + state[2:4])
    np.testing.assert_array_equal(obs["keypoints"][18:], state[:2])
    np.testing.assert_allclose(
        obs["environment_state_agent_pos"]["environment_state"].reshape(8, 2), corners_world(pose)
    )
    assert obs["pixels"].shape == (96, 96, 3) and obs["pixels"].dtype == np.uint8
    np.testing.assert_array_equal(obs["pixels_agent_pos"]["pixels"], obs["pixels"])
    for ot, env in envs.items():
        assert env.observation_space.contains(obs[ot]), ot


def test_action_marker_in_renders_but_never_in_observations():
    env = make("pixels", visualization_width=200, visualization_height=200)
    env.reset(options={"reset_to_state": [100, 100, 300, 300, 0.0]})
    obs, *_ = env.step(np.array([400.0, 100.0], dtype=np.float32))
    frame = env.render()
    red = np.array([255, 0, 0], dtype=np.uint8)
    assert frame.shape == (200, 200, 3)
    assert np.all(frame == red, axis=-1).any()
    assert not np.all(obs == red, axis=-1).any()


def test_info_contents_and_contact_count():
    env = make()
    _, info = env.reset(options={"reset_to_state": [256, 150, 256, 200, 0.0], "legacy": False})
    assert set(info) == {
        "pos_agent",
        "vel_agent",
        "block_pose",
        "goal_pose",
        "n_contacts",
        "is_success",
        "coverage",
    }
    np.testing.assert_array_equal(info["goal_pose"], GOAL_POSE)
    contacts = []
    for _ in range(5):  # push down into the bar: contacts on most substeps, at most 2 points each
        *_, info = env.step(np.array([256.0, 260.0], dtype=np.float32))
        contacts.append(info["n_contacts"])
    assert max(contacts) >= 1 and all(0 <= c <= 2 for c in contacts)
    assert info["block_pose"][1] > 200.0


def test_seeded_determinism_two_envs():
    a, b = make("keypoints"), make("keypoints")
    oa, ia = a.reset(seed=123)
    ob, ib = b.reset(seed=123)
    np.testing.assert_array_equal(oa, ob)
    rng = np.random.default_rng(0)
    for _ in range(60):
        action = rng.uniform(0, 512, 2).astype(np.float32)
        ra, rb = a.step(action), b.step(action)
        np.testing.assert_array_equal(ra[0], rb[0])
        assert ra[1:4] == rb[1:4]
        for key in ra[4]:
            np.testing.assert_array_equal(ra[4][key], rb[4][key])
    assert not np.array_equal(make().reset(seed=124)[0], make().reset(seed=123)[0])


@pytest.mark.filterwarnings("ignore:.*symmetric and normalized space")  # [0, 512] is the reference's
@pytest.mark.parametrize("obs_type", OBS_TYPES)
def test_check_env(obs_type):
    check_env(gym.make(ENV_ID, obs_type=obs_type).unwrapped)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_vector_envs(mode):
    kwargs = {"context": "spawn"} if mode == "async" else {}
    vec = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode=mode, vector_kwargs=kwargs)
    try:
        obs, _ = vec.reset(seed=[5, 6])
        single = make()
        np.testing.assert_array_equal(obs[0], single.reset(seed=5)[0])
        actions = np.array([[100.0, 100.0], [300.0, 300.0]], dtype=np.float32)
        obs, reward, *_ = vec.step(actions)
        np.testing.assert_array_equal(obs[0], single.step(actions[0])[0])
        assert obs.shape == (2, 5) and reward.shape == (2,)
    finally:
        vec.close()


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ([np.nan, 1.0], "finite"),
        ([np.inf, 1.0], "finite"),
        ([1.0, 2.0, 3.0], "shape"),
        ([[1.0, 2.0]], "shape"),
        ("left", "numeric"),
    ],
)
def test_bad_actions_raise_and_leave_state_unchanged(action, message):
    env = make()
    env.reset(seed=0)
    world = env.unwrapped.world
    before = world.snapshot()
    with pytest.raises(ValueError, match=message):
        env.step(action)
    assert world.snapshot() == before


def test_out_of_workspace_targets_are_clipped():
    env = make()
    env.reset(options={"reset_to_state": [500, 256, 100, 100, 0.0]})
    for _ in range(60):
        obs, *_ = env.step(np.array([5000.0, 256.0]))
    assert obs[0] == pytest.approx(512.0, abs=1e-3) and env.observation_space.contains(obs)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"reset_to_state": [1, 2, 3, 4]}, "shape"),
        ({"reset_to_state": [1, 2, 3, 4, np.nan]}, "finite"),
        ({"reset_to_state": [1, 2, 3, 900, 0.0]}, r"\[0, 512\]"),
        ({"reset_to_state": "home"}, "5 numbers"),
        ({"reset_to_state": [1, 2, 3, 4, 5], "legacy": "yes"}, "legacy"),
        ({"reset_state": [1, 2, 3, 4, 5]}, "unknown reset option"),
    ],
)
def test_malformed_reset_raises_and_leaves_state_unchanged(options, message):
    env = make()
    env.reset(seed=0)
    before = env.unwrapped.world.snapshot()
    with pytest.raises(ValueError, match=message):
        env.reset(options=options)
    assert env.unwrapped.world.snapshot() == before


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="obs_type"):
        PushTEnv(obs_type="rgb")
    with pytest.raises(ValueError, match="render_mode"):
        PushTEnv(render_mode="human")
    with pytest.raises(ValueError, match="observation_width"):
        PushTEnv(observation_width=0)
