"""The learned block model of ``control.forecast=robot_and_block``: pose from keypoints, fitting, the shipped
model against the env's own physics, and the forecast it gives the controller."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from parapolicy.envs.expert import run_expert_episode
from parapolicy.envs.geometry import keypoints_world
from parapolicy.policy.control.rollout import ControlConfig
from parapolicy.policy.control.tasks import make_task
from parapolicy.policy.control.tasks.pusht_block_model import (
    DEFAULT_BLOCK_MODEL,
    BlockMotionModel,
    block_pose_from_keypoints,
)
from parapolicy.policy.data.replay_store import ReplayStore

STORE = Path(__file__).resolve().parents[1] / "assets" / "pusht_expert.zarr"


def test_the_block_pose_is_recovered_exactly_from_its_keypoints():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pose = np.array([*rng.uniform(50, 450, 2), rng.uniform(-10, 10)])
        got = block_pose_from_keypoints(keypoints_world(pose).ravel())
        np.testing.assert_allclose(got[:2], pose[:2], atol=1e-9)
        assert abs((got[2] - pose[2] + np.pi) % (2 * np.pi) - np.pi) < 1e-12


@pytest.fixture(scope="module")
def store():
    return ReplayStore.open(STORE, keys=("state", "action"), mode="r")


def test_fitting_is_deterministic_and_the_model_round_trips(store, tmp_path):
    ends = store.episode_ends[:20]
    states = store["state"][: ends[-1]]
    a = BlockMotionModel.fit(states[:, :2], states[:, 2:], ends, max_delay=2, hidden=16, steps=50, seed=3)
    b = BlockMotionModel.fit(states[:, :2], states[:, 2:], ends, max_delay=2, hidden=16, steps=50, seed=3)
    path = BlockMotionModel.load(a.save(tmp_path / "m", {"note": "test"}))
    block, pusher = states[5, 2:5], states[5:8, 0:2]
    for d in (1, 2, 4):  # 4 > max_delay: chained
        pa = a.predict(block, states[5 : 6 + d, 0:2])
        np.testing.assert_array_equal(pa, b.predict(block, states[5 : 6 + d, 0:2]))
        np.testing.assert_array_equal(pa, path.predict(block, states[5 : 6 + d, 0:2]))
    np.testing.assert_array_equal(a.predict(block, pusher[:1]), block)  # d = 0: where it is
    with pytest.raises(FileExistsError):
        a.save(tmp_path / "m")
    with pytest.raises(ValueError, match="cannot load the PushT block model"):
        BlockMotionModel.load(tmp_path / "nothing")


def test_the_fit_script_writes_a_model_that_loads(tmp_path):
    from parapolicy.scripts.fit_block_model import main

    main([str(STORE), str(tmp_path / "m"), "--max-delay", "1", "--steps", "5"])
    model = BlockMotionModel.load(tmp_path / "m")
    assert model.max_delay == 1
    assert json.loads((tmp_path / "m" / "config.json").read_text())["fitted_on"] == str(STORE)


def test_the_fit_script_refuses_bad_inputs_in_one_line_before_fitting(tmp_path, capsys):
    from parapolicy.scripts.fit_block_model import main

    cases = [
        ([str(tmp_path / "nowhere"), str(tmp_path / "m")], 5, "no demonstration store at"),
        ([str(STORE), str(tmp_path)], 2, "exists; the model is written to a new directory"),
        ([str(STORE), str(tmp_path / "m"), "--steps", "0"], 2, "--steps must be >= 1"),
    ]
    for args, code, message in cases:
        with pytest.raises(SystemExit) as stop:
            main(args)
        err = capsys.readouterr().err
        assert stop.value.code == code and message in err and "Traceback" not in err, err
    assert not (tmp_path / "m").exists()


def test_the_shipped_model_forecasts_the_block_against_the_envs_own_physics():
    """Fresh expert episodes in PushT-v0 from test seeds (not in the training store): 4 ticks ahead the
    shipped model puts the block far closer to where the physics takes it than holding its pose does."""
    model = BlockMotionModel.load(DEFAULT_BLOCK_MODEL)
    err_model, err_held = [], []
    for seed in (100000, 100001, 100002):
        record = run_expert_episode(seed, record_keys=("state", "keypoint"))
        poses = np.stack([block_pose_from_keypoints(k) for k in record.data["keypoint"]])  # (T, 3)
        pusher = record.data["state"][:, :2].astype(np.float64)  # (T, 2)
        for t in range(0, len(poses) - 4, 2):
            pred = model.predict(poses[t], pusher[t : t + 5])
            err_model.append(np.linalg.norm(pred[:2] - poses[t + 4][:2]))
            err_held.append(np.linalg.norm(poses[t][:2] - poses[t + 4][:2]))
    assert np.mean(err_held) > 4.0  # the block does move within 4 ticks
    assert np.mean(err_model) < 0.4 * np.mean(err_held)


@pytest.mark.parametrize("name", ["pusht", "gym_pusht"])
def test_the_task_forecasts_the_block_only_for_keypoint_policies(name):
    if name == "gym_pusht":
        pytest.importorskip("gym_pusht")  # the dev extra installs it
    task = make_task(name)
    env = task.make_env(96)
    obs, info = task.reset(env, 100000)
    for a in ([260.0, 300.0], [250.0, 320.0]):
        obs, _, _, _, info = env.step(np.array(a))
    now = task.observation(obs, info)
    actions = np.array([[240.0, 340.0]] * 3)
    held, moved = task.forecast(env, now, actions), task.forecast(env, now, actions, objects=True)
    for h, m in zip(held, moved, strict=True):
        np.testing.assert_array_equal(h[-2:], m[-2:])  # the pusher's forecast is the same
        np.testing.assert_array_equal(h[:18], now[:18])
    model = BlockMotionModel.load(DEFAULT_BLOCK_MODEL)
    path = np.concatenate([now[None, -2:], np.stack([h[-2:] for h in held])])
    for k, m in enumerate(moved, start=1):
        want = keypoints_world(model.predict(block_pose_from_keypoints(now[:18]), path[: k + 1]))
        np.testing.assert_allclose(m[:18], want.ravel(), atol=1e-9)
    task.prepare_object_forecast()  # a keypoint policy: the model loads
    image = make_task("pusht", obs_type="pixels_agent_pos", image_size=32)
    with pytest.raises(ValueError, match="robot_and_block needs a keypoint"):
        image.prepare_object_forecast()
    assert ControlConfig(forecast="robot_and_block").forecast == "robot_and_block"
    with pytest.raises(ValueError, match=r"forecast must be one of \('none', 'robot', 'robot_and_block'\)"):
        ControlConfig(forecast="block")


@pytest.mark.parametrize("forecast", ["robot", "robot_and_block"])
def test_the_controller_asks_for_the_block_forecast_only_when_set(tiny_policy, monkeypatch, forecast):
    from parapolicy.policy.config import SamplerConfig
    from parapolicy.policy.control.evaluation import EvalConfig
    from parapolicy.policy.control.rollout import run_rollouts
    from parapolicy.policy.control.tasks.pusht import PushTTask

    asked = []
    real = PushTTask.forecast

    def spy(self, env, observation, actions, objects=False):
        asked.append(objects)
        return real(self, env, observation, actions, objects=objects)

    monkeypatch.setattr(PushTTask, "forecast", spy)
    tiny_policy.set_sampler(SamplerConfig(num_inference_steps=4))
    control = ControlConfig(mode="realtime_sim", latency_model="fixed:350", warmup_plans=0, forecast=forecast)
    run_rollouts(tiny_policy, EvalConfig(n_episodes=1, max_steps=30, max_videos=0, progress=False), control)
    assert len(asked) >= 2 and set(asked) == {forecast == "robot_and_block"}
