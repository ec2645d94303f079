"""The controller's `Task` protocol: PushT-v0 and the gym-pusht adapter drive the same controller."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from parapolicy.envs import PushTEnv, reference_initial_state
from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.control.evaluation import EvalConfig
from parapolicy.policy.control.rollout import ControlConfig, run_rollouts
from parapolicy.policy.control.task import Task
from parapolicy.policy.control.tasks import TASK_NAMES, check_task_name, make_task

gym_pusht = pytest.importorskip("gym_pusht")  # the dev extra installs it

CONTROL = Path(__file__).resolve().parents[1] / "policy" / "control"


def test_both_tasks_satisfy_the_protocol():
    for name in TASK_NAMES:
        assert isinstance(make_task(name), Task)
    with pytest.raises(ValueError, match="task must be one of"):
        check_task_name("pusht_v2")
    with pytest.raises(ValueError, match="task must be one of"):
        make_task("pusht_v2")


def test_gym_pusht_adapter_reproduces_the_reference_starts_and_observations():
    """Same start state, same keypoint observation and score as PushT-v0, at reset and after steps."""
    ours, theirs = make_task("pusht"), make_task("gym_pusht")
    env_a, env_b = ours.make_env(96), theirs.make_env(96)
    for seed in (100000, 100001, 0):
        obs_a, info_a = ours.reset(env_a, seed)
        obs_b, info_b = theirs.reset(env_b, seed)
        np.testing.assert_allclose(
            theirs.observation(obs_b, info_b), ours.observation(obs_a, info_a), atol=1e-9
        )
        assert theirs.score(0.0, info_b).progress == pytest.approx(ours.score(0.0, info_a).progress, abs=1e-9)
        np.testing.assert_array_equal(theirs.safe_action(obs_b, info_b), reference_initial_state(seed)[:2])
        for target in ([300.0, 200.0], [250.0, 300.0], [260.0, 260.0]):
            obs_a, r_a, _, _, info_a = env_a.step(np.array(target))
            obs_b, r_b, _, _, info_b = env_b.step(np.array(target))
            np.testing.assert_allclose(theirs.observation(obs_b, info_b), obs_a, atol=1e-9)
            s_a, s_b = ours.score(r_a, info_a), theirs.score(r_b, info_b)
            assert s_b.reward == pytest.approx(s_a.reward, abs=1e-9) and s_b.success == s_a.success
    small = theirs.make_env(16)
    theirs.reset(small, 100000)
    assert small.render().shape == (96, 96, 3)  # gym-pusht's action marker needs >= 96 px


def ec(n=2, steps=20, batch=2) -> EvalConfig:
    return EvalConfig(n_episodes=n, batch_size=batch, max_steps=steps, max_videos=0, progress=False)


@pytest.mark.parametrize(
    ("sampler", "control"),
    [
        (SamplerConfig(num_inference_steps=10), ControlConfig(warmup_plans=0)),
        (
            SamplerConfig(num_inference_steps=10, algorithm="picard", window=4, warm_start=True),
            ControlConfig(mode="realtime_sim", latency_model="fixed:250", warmup_plans=0),
        ),
        (
            SamplerConfig(num_inference_steps=10),
            ControlConfig(mode="realtime_sim", latency_model="fixed:350", warmup_plans=0, forecast="robot"),
        ),
    ],
)
def test_the_same_controller_gives_the_same_episodes_in_both_envs(tiny_policy, sampler, control):
    """The physics are the same, so frozen and simulated-latency rollouts agree episode by episode."""
    tiny_policy.set_sampler(sampler)
    batch = 2 if control.mode == "frozen" else 1
    a = run_rollouts(tiny_policy, ec(batch=batch), control, task=make_task("pusht"))
    b = run_rollouts(tiny_policy, ec(batch=batch), control, task=make_task("gym_pusht"))
    keys = ("seed", "n_steps", "success", "fresh_steps", "queued_steps", "held_steps", "ticks_lost")
    for ra, rb in zip(a.per_episode, b.per_episode, strict=True):
        assert {k: ra[k] for k in keys} == {k: rb[k] for k in keys}
        assert rb["max_reward"] == pytest.approx(ra["max_reward"], abs=1e-6)
        assert rb["final_coverage"] == pytest.approx(ra["final_coverage"], abs=1e-6)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_forecast_is_the_pushers_real_path_and_the_latest_block(name):
    """`Task.forecast` (control.forecast=robot): the pusher where it really is after the actions (its PD
    law; exact), the block keypoints as last observed."""
    task = make_task(name)
    env = task.make_env(96)
    obs, info = task.reset(env, 100000)
    rng = np.random.default_rng(0)
    for a in rng.uniform(150, 350, (3, 2)):
        obs, _, _, _, info = env.step(a)
    now = task.observation(obs, info)
    actions = rng.uniform(150, 350, (4, 2))
    forecast = task.forecast(env, now, actions)
    assert len(forecast) == 4
    for f, a in zip(forecast, actions, strict=True):
        obs, _, _, _, info = env.step(a)
        np.testing.assert_array_equal(f[-2:], task.observation(obs, info)[-2:])
        np.testing.assert_array_equal(f[:18], now[:18])


def test_forecast_of_an_image_observation_moves_agent_pos_only():
    task = make_task("pusht", obs_type="pixels_agent_pos", image_size=32)
    env = task.make_env(64)
    obs, info = task.reset(env, 100000)
    now = task.observation(obs, info)
    (f,) = task.forecast(env, now, np.array([[300.0, 300.0]]))
    obs, _, _, _, info = env.step(np.array([300.0, 300.0]))
    np.testing.assert_allclose(f["agent_pos"], task.observation(obs, info)["agent_pos"], atol=1e-4)
    assert f["pixels"] is now["pixels"]  # the latest frame: pixels are not forecast


def test_run_rollouts_takes_a_task_or_an_env_factory_not_both(tiny_policy):
    with pytest.raises(ValueError, match="either task or env_factory"):
        run_rollouts(tiny_policy, ec(), ControlConfig(), env_factory=PushTEnv, task=make_task("pusht"))


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_controller_modules_import_nothing_of_an_environment():
    """Only `policy/control/tasks/` may know an environment: nothing else in control imports envs."""
    modules = sorted(CONTROL.glob("*.py"))
    assert {p.name for p in modules} >= {
        "controller.py",
        "planner.py",
        "timeline.py",
        "records.py",
        "task.py",
    }
    for path in modules:
        bad = [m for m in _imports(path) if m.startswith(("parapolicy.envs", "gym_pusht", "gymnasium"))]
        assert not bad, f"{path.name} imports {bad}"
