"""Image (``pixels_agent_pos``) policies in the closed loop: the task's observations, the controller's
history and batching, sequential vs ParaDDPM plans, the encoder once per chunk, and the compare / eval /
profile jobs end to end on a LeRobot image directory and a parapolicy image checkpoint."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import image_config

from parapolicy.envs import PushTEnv, reference_initial_state
from parapolicy.envs.render import render_scene
from parapolicy.policy.compare import CompareConfig, SamplerEntry, run_compare
from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.control.evaluation import EvalConfig
from parapolicy.policy.control.rollout import ControlConfig, run_rollouts
from parapolicy.policy.control.tasks import make_task, task_for_policy
from parapolicy.policy.eval import EvalJobConfig, run_eval
from parapolicy.policy.model.lerobot_format import save_lerobot_policy
from parapolicy.policy.model.policy import DiffusionPolicy
from parapolicy.policy.model.pretrained import load_policy, save_policy
from parapolicy.policy.profile import ProfileConfig, run_profile

SEQ = SamplerConfig(num_inference_steps=10)
PICARD_EXACT = SamplerConfig(num_inference_steps=10, algorithm="picard", window=4, tol=1e-9)  # "tol 0"


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory):
    """A tiny random image policy as a parapolicy checkpoint and as a LeRobot 0.4+ directory."""
    torch.manual_seed(0)
    policy = DiffusionPolicy(image_config())
    gen = torch.Generator().manual_seed(1)
    # agent positions and actions inside the board, so the plans move the pusher about
    policy.normalizer.fit(
        {
            "obs": torch.rand(200, 2, generator=gen) * 400 + 56,
            "action": torch.rand(200, 2, generator=gen) * 400 + 56,
        }
    )
    root = tmp_path_factory.mktemp("image_policy")
    return save_policy(policy.eval(), root / "parapolicy"), save_lerobot_policy(policy, root / "lerobot")


def ec(n=2, steps=16, batch=2) -> EvalConfig:
    return EvalConfig(n_episodes=n, batch_size=batch, max_steps=steps, max_videos=0, progress=False)


def test_the_task_observation_is_what_the_env_renders():
    task = make_task("pusht", obs_type="pixels_agent_pos")
    env = task.make_env(64)
    obs, info = task.reset(env, 100001)
    for target in (None, [300.0, 200.0], [250.0, 330.0]):
        if target is not None:
            obs, _, _, _, info = env.step(np.array(target))
        seen = task.observation(obs, info)
        assert set(seen) == {"pixels", "agent_pos"} and seen["pixels"].dtype == np.uint8
        assert seen["pixels"].shape == (96, 96, 3)  # the reference's observation size, not the video's
        np.testing.assert_array_equal(seen["pixels"], render_scene(info["pos_agent"], info["block_pose"], 96))
        np.testing.assert_array_equal(seen["agent_pos"], np.asarray(info["pos_agent"], np.float32))
    assert env.render().shape == (64, 64, 3)
    # the same state in an env made by hand with PushT-v0's pixels_agent_pos observation
    ref = PushTEnv(obs_type="pixels_agent_pos")
    ref_obs, _ = ref.reset(options={"reset_to_state": reference_initial_state(100001)})
    first, _ = task.reset(task.make_env(64), 100001)
    np.testing.assert_array_equal(task.observation(first, {})["pixels"], ref_obs["pixels"])
    # the policy's own image size is served
    assert (
        task_for_policy("pusht", image_config(image_shape=(3, 64, 64), crop_shape=(56, 56))).image_size == 64
    )


def test_gym_pusht_serves_its_own_pixels_agent_pos():
    pytest.importorskip("gym_pusht")
    task = task_for_policy("gym_pusht", image_config())
    env = task.make_env(128)
    obs, info = task.reset(env, 100000)
    obs, _, _, _, info = env.step(np.array([300.0, 200.0]))
    seen = task.observation(obs, info)
    assert seen["pixels"].shape == (96, 96, 3) and seen["pixels"].dtype == np.uint8
    np.testing.assert_array_equal(seen["pixels"], env.unwrapped._render(visualize=False))  # no action marker
    np.testing.assert_array_equal(seen["agent_pos"], np.asarray(info["pos_agent"], np.float32))
    assert env.render().shape == (128, 128, 3)


def test_a_task_that_cannot_serve_the_policy_is_refused_before_any_episode(image_dirs, tiny_policy):
    policy = load_policy(image_dirs[0])
    with pytest.raises(
        ValueError, match=r"obs_type='pixels_agent_pos' observations but task 'pusht' serves 'state'"
    ):
        run_rollouts(policy, ec(), ControlConfig(warmup_plans=0), task=make_task("pusht"))
    with pytest.raises(
        ValueError, match=r"obs_type='state' observations but task 'pusht' serves 'pixels_agent_pos'"
    ):
        run_rollouts(
            tiny_policy,
            ec(),
            ControlConfig(warmup_plans=0),
            task=make_task("pusht", obs_type="pixels_agent_pos"),
        )
    with pytest.raises(ValueError, match=r"takes \(96, 96, 3\) images but task 'pusht' renders 64 px"):
        run_rollouts(
            policy, ec(), ControlConfig(), task=make_task("pusht", obs_type="pixels_agent_pos", image_size=64)
        )
    with pytest.raises(ValueError, match=r"renders square RGB images .* \(1, 96, 96\)"):
        task_for_policy("pusht", image_config(image_shape=(1, 96, 96), image_mean=(0.5,), image_std=(0.5,)))
    with pytest.raises(
        ValueError, match=r"serves observation types \('state', 'pixels_agent_pos'\), not obs_type='pixels'"
    ):
        make_task("gym_pusht", obs_type="pixels")


def recording(policy: DiffusionPolicy) -> dict[str, list]:
    """Record every plan and count encoder and denoiser (U-Net) calls of ``policy``."""
    calls: dict[str, list] = {"plans": [], "encoder": [], "unet": [], "model_calls": []}
    original = policy.predict_action_chunk

    def predict(*args, **kwargs):
        pred = original(*args, **kwargs)
        calls["plans"].append(pred.plan.clone())
        calls["model_calls"].append(pred.result.model_calls)
        return pred

    policy.predict_action_chunk = predict
    policy.network.rgb_encoder.register_forward_hook(lambda m, i, o: calls["encoder"].append(i[0].shape[0]))
    policy.network.unet.register_forward_hook(lambda m, i, o: calls["unet"].append(i[0].shape[0]))
    return calls


@pytest.mark.parametrize(
    "control",
    [
        ControlConfig(warmup_plans=0),
        ControlConfig(mode="realtime_sim", latency_model="fixed:250", warmup_plans=0, stitch="inpaint"),
    ],
    ids=["frozen", "realtime_sim"],
)
def test_sequential_and_paraddpm_give_the_same_plans_and_the_encoder_runs_once_per_chunk(image_dirs, control):
    runs = {}
    for name, sampler in (("sequential", SEQ), ("paraddpm", PICARD_EXACT)):
        policy = load_policy(image_dirs[1], sampler=sampler)  # the LeRobot directory
        calls = recording(policy)
        result = run_rollouts(policy, ec(batch=2), control)
        runs[name] = (result, calls)
        n_plans = len(calls["plans"])
        assert n_plans >= 2 and sum(r["n_chunks"] for r in result.per_episode) >= n_plans
        # one encoder call per plan, on the batch's B x To images; the U-Net runs once per model call
        assert len(calls["encoder"]) == n_plans
        assert sum(calls["encoder"]) == 2 * sum(p.shape[0] for p in calls["plans"])
        assert len(calls["unet"]) == sum(calls["model_calls"])
        assert sum(r["observation_errors"] + r["denoiser_errors"] for r in result.per_episode) == 0
    (seq, seq_calls), (par, par_calls) = runs["sequential"], runs["paraddpm"]
    # Picard iterates the U-Net alone, on window x B rows a call; the encoder saw B x To images a plan
    assert (
        max(par_calls["unet"]) == 4 * max(seq_calls["unet"]) and par_calls["encoder"] == seq_calls["encoder"]
    )
    assert len(par_calls["plans"]) == len(seq_calls["plans"])
    for a, b in zip(seq_calls["plans"], par_calls["plans"], strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-2)  # px: a tiny tol solves the same chain
    for ra, rb in zip(seq.per_episode, par.per_episode, strict=True):
        assert (ra["n_steps"], ra["n_chunks"], ra["success"]) == (
            rb["n_steps"],
            rb["n_chunks"],
            rb["success"],
        )
        assert rb["max_reward"] == pytest.approx(ra["max_reward"], abs=1e-6)


def test_lockstep_batches_give_the_episodes_of_single_plans(image_dirs):
    policy = load_policy(image_dirs[0])
    batched = run_rollouts(policy, ec(batch=2), ControlConfig(warmup_plans=1))
    single = run_rollouts(policy, ec(batch=1), ControlConfig(warmup_plans=0))
    for ra, rb in zip(batched.per_episode, single.per_episode, strict=True):
        assert (ra["n_steps"], ra["n_chunks"]) == (rb["n_steps"], rb["n_chunks"])
        assert rb["max_reward"] == pytest.approx(ra["max_reward"], abs=1e-5)
        assert rb["mean_change"] == pytest.approx(ra["mean_change"], abs=1e-3)
    assert batched.latency["batch_size"] == 2 and len(batched.warmup_ms) == 1


def test_compare_runs_a_lerobot_image_policy_in_every_mode(image_dirs, tmp_path):
    cfg = CompareConfig(
        policy_path=str(image_dirs[1]),
        samplers={"sequential": SamplerEntry(SEQ), "paraddpm": SamplerEntry(PICARD_EXACT)},
        run=["sequential", "paraddpm"],
        modes=["frozen", "realtime_sim", "wallclock"],
        realtime_episodes=1,
        eval=EvalConfig(n_episodes=2, batch_size=2, max_steps=12, max_videos=1, progress=False),
        control=ControlConfig(warmup_plans=1),
        plots=False,
    )
    data = run_compare(cfg, tmp_path / "run")
    rows = {(r["sampler"], r["mode"]): r for r in data["table"]}
    modes = ("frozen", "realtime_sim", "wallclock")
    assert set(rows) == {(s, m) for s in ("sequential", "paraddpm") for m in modes}
    for r in rows.values():
        assert r["chunk_p50_ms"] > 0 and r["model_calls_per_chunk"] > 0
    par, seq = rows[("paraddpm", "frozen")], rows[("sequential", "frozen")]
    assert par["model_evals_per_chunk"] > seq["model_evals_per_chunk"]  # Picard's wider denoiser calls
    assert abs(data["checks"]["frozen_score_within_tolerance"]["diff_vs_baseline"]["paraddpm"]) < 1e-4
    info = json.loads((tmp_path / "run" / "paraddpm" / "eval_info.json").read_text())
    assert set(info["by_mode"]) == {"realtime_sim", "wallclock"} and len(info["per_episode"]) == 2
    assert (tmp_path / "run" / "videos" / "sequential_frozen_episode_0.mp4").stat().st_size > 0


def test_eval_and_profile_run_an_image_checkpoint(image_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("PARAPOLICY_CACHE_DIR", str(tmp_path / "cache"))
    result = run_eval(
        EvalJobConfig(policy_path=str(image_dirs[0]), sampler=SEQ, eval=ec(steps=12)), tmp_path / "eval"
    )
    assert result["aggregated"]["n_episodes"] == 2
    assert sum(r["observation_errors"] + r["denoiser_errors"] for r in result["per_episode"]) == 0
    auto = dataclasses.replace(PICARD_EXACT, window="auto", tol=0.1)  # the window choice runs the encoder too
    summary = run_profile(
        ProfileConfig(
            policy_path=str(image_dirs[0]),
            sampler=auto,
            control=ControlConfig(mode="realtime_sim", warmup_plans=1),
            eval=ec(n=1, steps=12, batch=1),
            plots=False,
        ),
        tmp_path / "profile",
    )
    assert summary["window_choice"]["window"] in (2, 4, 8, 10)
    assert summary["latency"]["n_steps"] == 12 and summary["latency"]["chunk"]["n"] >= 2


# (n_steps, n_chunks, ticks_lost, max_reward, mean_change) per episode of the conftest tiny low-dim policy,
# 3 episodes of 40 steps, batch 3, DDPM-10 / Picard window 4 warm: recorded with the controller before
# image observations went through it (commit df1e641), which must not change a low-dim episode.
LOWDIM_GOLDEN = {
    "frozen": [
        (40, 5, 0, 0.0, 407.7386169433594),
        (40, 5, 0, 0.1778541903883771, 392.2704772949219),
        (40, 5, 0, 0.0, 322.0563659667969),
    ],
    "realtime_sim": [
        (40, 5, 12, 0.0, 375.9508056640625),
        (40, 5, 12, 0.1778541903883771, 327.5022277832031),
        (40, 5, 12, 0.0, 336.56756591796875),
    ],
}


@pytest.mark.parametrize("mode", ["frozen", "realtime_sim"])
def test_a_low_dim_policy_runs_the_episodes_it_ran_before(tiny_policy, mode):
    if mode == "frozen":
        sampler, control = SEQ, ControlConfig(warmup_plans=1)
    else:
        sampler = SamplerConfig(num_inference_steps=10, algorithm="picard", window=4, warm_start=True)
        control = ControlConfig(mode="realtime_sim", latency_model="fixed:250", warmup_plans=0)
    tiny_policy.set_sampler(sampler)
    result = run_rollouts(tiny_policy, ec(n=3, steps=40, batch=3), control)
    got = [
        (r["n_steps"], r["n_chunks"], r["ticks_lost"], r["max_reward"], r["mean_change"])
        for r in result.per_episode
    ]
    for g, want in zip(got, LOWDIM_GOLDEN[mode], strict=True):
        assert g[:3] == want[:3]
        assert g[3:] == pytest.approx(want[3:], rel=1e-6, abs=1e-9)
