"""Control modes, deadlines, output guard, warm-up, budget choice and soak of `policy/control/rollout.py`."""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import numpy as np
import pytest
import torch
from conftest import slow_denoiser

from parapolicy.envs import PushTEnv
from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.control.evaluation import EvalConfig
from parapolicy.policy.control.latency import ACTION_SOURCES, ChunkLog, StepLog, percentiles, write_csv
from parapolicy.policy.control.rollout import (
    ControlConfig,
    Controller,
    LatencyModel,
    evaluate_policy,
    plan_for_budget,
    run_rollouts,
)
from parapolicy.policy.control.tasks import make_task

SEQ10 = SamplerConfig(num_inference_steps=10)
PIC10 = SamplerConfig(num_inference_steps=10, algorithm="picard", window=4)
PIC10_WS = dataclasses.replace(PIC10, warm_start=True)


def ec(n=2, steps=24, batch=1, **kw) -> EvalConfig:
    return EvalConfig(n_episodes=n, batch_size=batch, max_steps=steps, max_videos=0, progress=False, **kw)


class RecordingEnv(PushTEnv):
    """A PushT env that records every action it receives and fails the test on a non-finite one."""

    def __init__(self, **kw) -> None:
        super().__init__(obs_type="keypoints", **kw)
        self.actions: list[np.ndarray] = []

    def step(self, action):
        a = np.asarray(action, dtype=np.float64)
        assert a.shape == (2,) and np.isfinite(a).all(), f"non-finite action reached env.step: {a}"
        self.actions.append(a.copy())
        return super().step(action)


def recording_factory():
    envs: list[RecordingEnv] = []

    def make() -> RecordingEnv:
        env = RecordingEnv(visualization_width=64, visualization_height=64)
        envs.append(env)
        return env

    return make, envs


def sources(result, episode=0) -> list[str]:
    sel = result.steps.column("episode") == episode
    return [ACTION_SOURCES[c] for c in result.steps.column("action_source")[sel]]


# --------------------------------------------------------------------------------------------------
# configuration
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "turbo"}, "control.mode must be one of"),
        ({"on_miss": "panic"}, "control.on_miss must be one of"),
        ({"hz": 0}, "control.hz must be > 0"),
        ({"budget_ms": 0}, "control.budget_ms must be > 0"),
        ({"budget_ms": -5.0}, "control.budget_ms must be > 0"),
        ({"max_consecutive_misses": 0}, "max_consecutive_misses must be >= 1"),
        ({"n_action_steps": 0}, "n_action_steps must be >= 1"),
        ({"warmup_plans": -1}, "warmup_plans must be >= 0"),
        ({"latency_model": "fixed:abc"}, "control.latency_model must be"),
        ({"latency_model": "fixed:-3"}, "control.latency_model must be"),
        ({"latency_model": "gauss:3"}, "control.latency_model must be"),
        ({"mode": "wallclock", "latency_model": "fixed:10"}, "must be 'measured' in wallclock"),
        ({"mode": "frozen", "latency_model": "fixed:550"}, "must be 'measured' in frozen mode"),
        ({"mode": "frozen", "latency_model": "per_call:4.5,0.37"}, "must be 'measured' in frozen mode"),
        ({"budget_margin": 1.5}, "budget_margin must be in"),
    ],
)
def test_impossible_control_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ControlConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"algorithm": "picard", "window": 0}, "sampler.window must be in"),
        ({"algorithm": "picard", "tol": 0.0}, "sampler.tol must be > 0"),
        ({"algorithm": "picard", "tol": -1.0}, "sampler.tol must be > 0"),
        ({"algorithm": "picard", "max_iters": 0}, "sampler.max_iters must be >= 1"),
    ],
)
def test_impossible_sampler_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplerConfig(**kwargs)


def test_too_many_action_steps_fail_before_any_rollout(tiny_policy):
    with pytest.raises(ValueError, match=r"n_action_steps=16 must be <= horizon - n_obs_steps \+ 1 = 15"):
        Controller(tiny_policy, ControlConfig(n_action_steps=16), ec(), make_task("pusht"))


def test_latency_models():
    assert LatencyModel.parse("measured").latency_ms(12.5, (1, 1)) == 12.5
    assert LatencyModel.parse("fixed:40").latency_ms(12.5, (1, 1)) == 40.0
    m = LatencyModel.parse("per_call:2,0.5")
    assert m.latency_ms(99.0, (4, 4, 2)) == pytest.approx(3 * 2 + 0.5 * 10)
    assert LatencyModel.parse("per_call:3").latency_ms(0.0, (1,) * 10) == pytest.approx(30.0)


# --------------------------------------------------------------------------------------------------
# frozen mode
@pytest.mark.parametrize("sampler", [SEQ10, PIC10], ids=["sequential", "picard"])
def test_evaluate_policy_is_frozen_mode_without_warm_up(tiny_policy, sampler):
    """Warm-up plans draw from their own generator: with or without them the episodes are the same."""
    tiny_policy.set_sampler(sampler)
    cfg = ec(n=3, steps=30, batch=3)
    seen = []
    ref = evaluate_policy(tiny_policy, cfg, on_episode=seen.append)
    got = run_rollouts(tiny_policy, cfg, ControlConfig(mode="frozen", warmup_plans=2))
    keys = ("seed", "max_reward", "sum_reward", "success", "n_steps", "final_coverage")
    assert [{k: e[k] for k in keys} for e in got.per_episode] == [
        {k: e[k] for k in keys} for e in ref["per_episode"]
    ]
    assert [e["seed"] for e in ref["per_episode"]] == [100000, 100001, 100002]
    assert sorted(e["seed"] for e in seen) == [100000, 100001, 100002]
    assert got.aggregated["mean_score"] == ref["aggregated"]["mean_score"]
    assert len(got.warmup_ms) == 2
    # one fresh step per plan, the rest queued; every step recorded
    assert got.latency["action_sources"]["fresh"] == got.aggregated["total_n_chunks"]
    assert len(got.steps) == sum(e["n_steps"] for e in got.per_episode)
    assert got.aggregated["total_ticks_lost"] == 0 and got.aggregated["total_held_steps"] == 0


def test_frozen_results_do_not_depend_on_batch_size(tiny_policy):
    tiny_policy.set_sampler(SEQ10)
    a = run_rollouts(tiny_policy, ec(n=3, steps=20, batch=3), ControlConfig())
    b = run_rollouts(tiny_policy, ec(n=3, steps=20, batch=1), ControlConfig())
    for x, y in zip(a.per_episode, b.per_episode, strict=True):  # batch-1 convs round differently
        assert x["sum_reward"] == pytest.approx(y["sum_reward"], rel=1e-5, abs=1e-6)
        assert x["final_coverage"] == pytest.approx(y["final_coverage"], rel=1e-5, abs=1e-6)


def test_warmup_is_excluded_and_reported_apart(tiny_policy):
    tiny_policy.set_sampler(SEQ10)
    r = run_rollouts(tiny_policy, ec(n=1, steps=16), ControlConfig(warmup_plans=3))
    lat = r.latency
    assert lat["warmup_steps_excluded"] == 3 and len(lat["warmup"]["latency_ms"]) == 3
    assert len(r.steps) == 16 and len(r.chunks) == 2  # only the episode's own plans
    assert lat["chunk"]["n"] == 2
    r0 = run_rollouts(tiny_policy, ec(n=1, steps=16), ControlConfig(warmup_plans=0))
    assert r0.latency["warmup"]["n"] == 0
    assert r0.per_episode[0]["sum_reward"] == r.per_episode[0]["sum_reward"]  # warm-up uses its own noise


# --------------------------------------------------------------------------------------------------
# realtime_sim
def encode_plans(policy):
    """Make every plan's executed row i of plan k equal to (20 k + i, 7): the action names its origin."""
    real = policy.predict_action_chunk
    calls = {"k": 0}

    def fake(obs, noise=None, generator=None, x0_guess=None, inpaint=None):
        pred = real(obs, noise=noise, generator=generator, x0_guess=x0_guess, inpaint=inpaint)
        k = calls["k"]
        calls["k"] += 1
        plan = torch.zeros_like(pred.plan)
        start = policy.config.action_start
        for h in range(plan.shape[1]):
            plan[:, h, 0] = 20.0 * k + (h - start)
            plan[:, h, 1] = 7.0
        return dataclasses.replace(pred, plan=plan)

    policy.__dict__["predict_action_chunk"] = fake
    return calls


def test_realtime_sim_hold_and_skip_semantics_hand_checked(tiny_policy):
    """Ta = 8, 15 executable rows, 10 Hz, fixed 250 ms -> every plan after the first is 3 ticks late."""
    tiny_policy.set_sampler(SEQ10)
    encode_plans(tiny_policy)
    make, envs = recording_factory()
    control = ControlConfig(mode="realtime_sim", latency_model="fixed:250", warmup_plans=0)
    r = run_rollouts(tiny_policy, ec(n=1, steps=24), control, env_factory=make)
    # tick 0: plan 0 (the world waits for the first plan), rows 0-7; ticks 8-10: plan 0's tail rows
    # 8-10 while plan 1 (requested at tick 8) is computed; tick 11: plan 1 arrives, its rows 0-2 are
    # past and discarded, row 3 is fresh; plan 2 requested at 16, arrives at 19, and so on.
    expected_actions = (
        [0 + i for i in range(11)]  # plan 0, rows 0..10
        + [20 + i for i in range(3, 11)]  # plan 1, rows 3..10 (ticks 11..18)
        + [40 + i for i in range(3, 8)]  # plan 2, rows 3..7 (ticks 19..23)
    )
    got = [a[0] for a in envs[-1].actions]
    assert got == pytest.approx(expected_actions)
    assert sources(r) == (
        ["fresh"] + ["queued"] * 10 + ["fresh"] + ["queued"] * 7 + ["fresh"] + ["queued"] * 4
    )
    ep = r.per_episode[0]
    assert ep["ticks_lost"] == 6 and ep["tail_steps"] == 6 and ep["held_steps"] == 0
    assert list(r.chunks.column("request_step")) == [0, 8, 16]
    assert list(r.chunks.column("ready_step")) == [0, 11, 19]
    fresh = r.steps.column("action_source") == 0
    assert list(r.steps.column("latency_ms")[fresh][1:]) == [250.0, 250.0]  # modelled plan latency
    assert list(r.steps.column("ticks_late")[fresh]) == [0, 3, 3]
    # 250 ms > the 100 ms budget: every fresh step is a miss (the first too: the world waited for it)
    assert ep["deadline_misses"] == 3


def test_realtime_sim_without_plan_tail_holds_the_last_target(tiny_policy):
    tiny_policy.set_sampler(SEQ10)
    encode_plans(tiny_policy)
    make, envs = recording_factory()
    control = ControlConfig(
        mode="realtime_sim", latency_model="fixed:250", use_plan_tail=False, warmup_plans=0
    )
    r = run_rollouts(tiny_policy, ec(n=1, steps=16), control, env_factory=make)
    got = [a[0] for a in envs[-1].actions]
    # ticks 8-10 hold plan 0's last target (row 7); plan 1 row 3 at tick 11
    assert got == pytest.approx([*range(8), 7, 7, 7, 23, 24, 25, 26, 27])
    assert sources(r) == ["fresh"] + ["queued"] * 7 + ["held"] * 3 + ["fresh"] + ["queued"] * 4
    ep = r.per_episode[0]
    assert ep["held_steps"] == 3 and ep["deadline_misses"] == 3 + 2 and ep["ticks_lost"] == 3


def test_realtime_sim_all_late_executes_the_last_action(tiny_policy):
    """2 s latency: 20 ticks, more than the 15 rows; after the tail runs out the robot holds."""
    tiny_policy.set_sampler(SEQ10)
    encode_plans(tiny_policy)
    make, envs = recording_factory()
    control = ControlConfig(mode="realtime_sim", latency_model="fixed:2000", warmup_plans=0)
    r = run_rollouts(tiny_policy, ec(n=1, steps=30), control, env_factory=make)
    got = [a[0] for a in envs[-1].actions]
    # ticks 0-14 plan 0 rows 0-14; 15-27 hold row 14; tick 28 plan 1 (requested at 8) is entirely past:
    # its last row (14) is executed; then hold it (plan 2 was requested at 28).
    assert got == pytest.approx([*range(15)] + [14] * 13 + [34, 34])
    assert sources(r)[28] == "fresh" and sources(r)[15] == "held" and sources(r)[29] == "held"
    assert r.per_episode[0]["ticks_lost"] == 14
    assert r.aggregated["total_ticks_lost"] == 14 and r.aggregated["mean_ticks_lost"] == 14.0


def test_realtime_sim_a_plan_arriving_one_tick_after_its_last_row_executes_that_row(tiny_policy):
    """1.5 s latency: 15 ticks, exactly the 15 rows; plan 1 (requested at 8) arrives at 23, one tick
    after its row 14 was due: it executes row 14 there (14 ticks lost), it does not hold."""
    tiny_policy.set_sampler(SEQ10)
    encode_plans(tiny_policy)
    make, envs = recording_factory()
    control = ControlConfig(mode="realtime_sim", latency_model="fixed:1500", warmup_plans=0)
    r = run_rollouts(tiny_policy, ec(n=1, steps=24), control, env_factory=make)
    assert [a[0] for a in envs[-1].actions] == pytest.approx([*range(15)] + [14] * 8 + [34])
    assert sources(r)[23] == "fresh" and r.per_episode[0]["ticks_lost"] == 14


@pytest.mark.parametrize(("latency", "missed"), [("fixed:100", False), ("fixed:100.5", True)])
def test_realtime_sim_a_plan_exactly_on_budget_is_not_a_miss(tiny_policy, latency, missed):
    tiny_policy.set_sampler(SEQ10)
    control = ControlConfig(mode="realtime_sim", latency_model=latency, warmup_plans=0)  # budget 100 ms
    r = run_rollouts(tiny_policy, ec(n=1, steps=20), control)
    fresh = r.steps.column("action_source") == 0
    assert fresh.sum() >= 2
    assert (r.steps.column("missed")[fresh] == missed).all()
    assert (r.chunks.column("over_budget") == missed).all()


def test_realtime_sim_warm_starts_a_plan_requested_a_whole_horizon_after_the_previous(tiny_policy):
    """fixed:1600 (16 ticks = H): plan 1 (tick 8) arrives at 24 and plan 2 is requested there, exactly
    H ticks after plan 1: the previous sample still covers the shift, so plan 2 is warm started."""
    tiny_policy.set_sampler(PIC10_WS)
    control = ControlConfig(mode="realtime_sim", latency_model="fixed:1600", warmup_plans=0)
    r = run_rollouts(tiny_policy, ec(n=1, steps=42), control)  # plan 2 is installed at tick 40
    asked = r.chunks.column("request_step")
    assert list(asked[:3]) == [0, 8, 24] and tiny_policy.config.horizon == 16
    assert list(r.chunks.column("warm_started")[:3]) == [False, True, True]


def test_progress_counts_every_episodes_whole_step_budget_even_when_one_stops_early(tiny_policy):
    """on_steps totals n_episodes x max_steps, so a progress bar ends full after an early stop."""
    tiny_policy.set_sampler(SEQ10)
    done = []
    control = ControlConfig(mode="realtime_sim", latency_model="fixed:2000", on_miss="stop", warmup_plans=0)
    r = run_rollouts(tiny_policy, ec(n=2, steps=24), control, on_steps=done.append)
    assert all(e["stopped"] and e["n_steps"] < 24 for e in r.per_episode)  # starved after 15 rows
    assert sum(done) == 2 * 24


def test_a_fault_plan_arrives_after_the_modelled_latency(tiny_policy):
    """Under fixed:250 a NaN plan (plan 1) takes 250 ms like any other: deterministic, 3 ticks late."""
    tiny_policy.set_sampler(SEQ10)
    nan_after(tiny_policy, n_ok=10)  # plan 0 is fine, plan 1 is NaN
    control = ControlConfig(mode="realtime_sim", latency_model="fixed:250", warmup_plans=0)
    r = run_rollouts(tiny_policy, ec(n=1, steps=16), control)
    faults = r.chunks.column("fault") == 1
    assert faults.any() and (r.chunks.column("latency_ms")[faults] == 250).all()
    ready, asked = r.chunks.column("ready_step")[faults], r.chunks.column("request_step")[faults]
    assert (ready - asked == 3).all()
    assert sources(r)[int(ready[0])] == "fallback"


def test_realtime_sim_is_deterministic_with_a_fixed_latency_model(tiny_policy):
    tiny_policy.set_sampler(PIC10_WS)
    control = ControlConfig(mode="realtime_sim", latency_model="per_call:30,2")
    a = run_rollouts(tiny_policy, ec(n=2, steps=30), control)
    b = run_rollouts(tiny_policy, ec(n=2, steps=30), control)
    assert a.per_episode == b.per_episode
    for col in ("action_source", "chunk", "ticks_late", "latency_ms", "t_obs_ns", "missed", "picard_iters"):
        fresh_or_all = slice(None) if col != "latency_ms" else a.steps.column("action_source") == 0
        assert np.array_equal(a.steps.column(col)[fresh_or_all], b.steps.column(col)[fresh_or_all]), col
    assert a.aggregated["total_ticks_lost"] > 0  # 9 calls x (30 + 2 x 4) ms > 100 ms: plans are late


def test_realtime_sim_same_noise_for_both_samplers_and_warm_start(tiny_policy):
    """Sequential and Picard (warm start, fresh noise) draw identical noise: same plans up to tol."""
    control = ControlConfig(mode="realtime_sim", latency_model="fixed:150")
    tiny_policy.set_sampler(SEQ10)
    seq = run_rollouts(tiny_policy, ec(n=1, steps=24), control)
    tiny_policy.set_sampler(dataclasses.replace(PIC10_WS, tol=1e-6))
    par = run_rollouts(tiny_policy, ec(n=1, steps=24), control)
    assert seq.per_episode[0]["sum_reward"] == pytest.approx(par.per_episode[0]["sum_reward"], abs=1e-4)
    assert list(seq.chunks.column("ready_step")) == list(par.chunks.column("ready_step"))
    assert par.chunks.column("warm_started")[1:].all() and not par.chunks.column("warm_started")[0]


# --------------------------------------------------------------------------------------------------
# the output guard
def nan_after(policy, n_ok: int):
    inner = policy.denoise
    calls = {"n": 0}

    def denoise(x, t, cond):
        calls["n"] += 1
        out = inner(x, t, cond)
        return out if calls["n"] <= n_ok else torch.full_like(out, float("nan"))

    policy.__dict__["denoise"] = denoise
    return calls


@pytest.mark.parametrize("mode", ["frozen", "realtime_sim"])
def test_nan_denoiser_yields_fallback_and_never_reaches_the_env(tiny_policy, mode):
    tiny_policy.set_sampler(SEQ10)
    nan_after(tiny_policy, n_ok=10 * 2 + 10 * 2)  # warm-up (2 plans) + the first 2 plans are fine
    make, envs = recording_factory()
    control = ControlConfig(mode=mode, latency_model="fixed:50" if mode == "realtime_sim" else "measured")
    r = run_rollouts(tiny_policy, ec(n=1, steps=24), control, env_factory=make)
    ep = r.per_episode[0]
    assert ep["n_steps"] == 24  # the rollout went on
    assert ep["nan_chunks"] > 0 and ep["fallback_steps"] == ep["nan_chunks"]
    assert r.aggregated["total_nan_chunks"] == ep["nan_chunks"]
    src = sources(r)
    first_fault = src.index("fallback")
    assert first_fault == 16 if mode == "frozen" else first_fault >= 16
    actions = envs[-1].actions  # every action the env received was finite (RecordingEnv asserts it)
    assert len(actions) == 24 and all(np.isfinite(a).all() for a in actions)
    assert (r.chunks.column("fault") == 1).sum() == ep["nan_chunks"]


def test_raising_denoiser_yields_fallback_logged_once(tiny_policy, caplog):
    tiny_policy.set_sampler(SEQ10)
    inner = tiny_policy.denoise
    calls = {"n": 0}

    def denoise(x, t, cond):
        calls["n"] += 1
        if calls["n"] > 25:  # call 5 of the second episode plan (after 1 warm-up plan and plan 0)
            raise RuntimeError("device lost")
        return inner(x, t, cond)

    tiny_policy.__dict__["denoise"] = denoise
    make, envs = recording_factory()
    with caplog.at_level(logging.WARNING, logger="parapolicy.policy.control.rollout"):
        r = run_rollouts(tiny_policy, ec(n=1, steps=12), ControlConfig(warmup_plans=1), env_factory=make)
    ep = r.per_episode[0]
    assert ep["denoiser_errors"] == 4 and ep["fallback_steps"] == 4  # ticks 8-11, replanned each tick
    assert sources(r) == ["fresh"] + ["queued"] * 7 + ["fallback"] * 4
    assert ep["n_steps"] == 12
    faults = [rec for rec in caplog.records if "policy fault" in rec.getMessage()]
    assert len(faults) == 1 and "device lost" in str(faults[0].exc_info[1])


def test_faulty_observation_is_rejected_before_the_model(tiny_policy):
    tiny_policy.set_sampler(SEQ10)

    class BadObsEnv(RecordingEnv):
        def step(self, action):
            obs, *rest = super().step(action)
            if len(self.actions) >= 5:
                obs = obs.copy()
                obs[3] = np.nan
            return (obs, *rest)

    r = run_rollouts(
        tiny_policy,
        ec(n=1, steps=12),
        ControlConfig(max_consecutive_misses=3),
        env_factory=lambda: BadObsEnv(visualization_width=64, visualization_height=64),
    )
    ep = r.per_episode[0]
    assert ep["observation_errors"] >= 1 and ep["stopped"] and ep["stop_reason"] == "max_consecutive_misses"


# --------------------------------------------------------------------------------------------------
# wallclock
def wall(policy, **kw):
    """50 Hz wallclock, 4-step plans of >= 4 x 15 ms: every plan is >= 3 ticks late."""
    policy.set_sampler(SamplerConfig(num_inference_steps=4, window=4))
    slow_denoiser(policy, 15)
    base = {"mode": "wallclock", "hz": 50, "use_plan_tail": False, "warmup_plans": 1}
    make, envs = recording_factory()
    r = run_rollouts(policy, ec(n=1, steps=20), ControlConfig(**{**base, **kw}), env_factory=make)
    return r, envs[-1]  # envs[0] served the warm-up's first observation


def test_wallclock_on_miss_hold(tiny_policy):
    r, env = wall(tiny_policy, on_miss="hold")
    ep = r.per_episode[0]
    assert ep["n_steps"] == 20 and not ep["stopped"]
    assert ep["held_steps"] >= 3 and ep["deadline_misses"] >= ep["held_steps"]
    src = sources(r)
    assert src[:8] == ["fresh"] + ["queued"] * 7 and src[8] == "held"
    assert np.allclose(env.actions[8], env.actions[7])  # hold = re-send the last target
    assert r.per_episode[0]["ticks_lost"] >= 3


def test_wallclock_on_miss_fallback(tiny_policy):
    r, env = wall(tiny_policy, on_miss="fallback")
    ep = r.per_episode[0]
    assert ep["fallback_steps"] >= 3 and ep["held_steps"] == 0
    assert sources(r)[8] == "fallback"


def test_wallclock_on_miss_stop(tiny_policy):
    r, env = wall(tiny_policy, on_miss="stop")
    ep = r.per_episode[0]
    assert ep["stopped"] and ep["stop_reason"] == "deadline_miss"
    assert ep["n_steps"] == 8 and ep["stop_step"] == 8  # the first starved tick ends the episode
    assert r.aggregated["n_stopped"] == 1


def test_wallclock_max_consecutive_misses(tiny_policy):
    r, env = wall(tiny_policy, on_miss="hold", max_consecutive_misses=2)
    ep = r.per_episode[0]
    assert ep["stopped"] and ep["stop_reason"] == "max_consecutive_misses"
    assert ep["n_steps"] == 10  # ticks 8 and 9 held and missed, then the loop stops safely


def test_wallclock_pacing_and_per_step_latency(tiny_policy):
    tiny_policy.set_sampler(SamplerConfig(num_inference_steps=4, window=4))
    t0 = time.perf_counter()
    r = run_rollouts(tiny_policy, ec(n=1, steps=20), ControlConfig(mode="wallclock", hz=50, warmup_plans=1))
    elapsed = time.perf_counter() - t0
    # wallclock mode is defined by real time, so this needs the clock; a lower bound cannot fail
    # because the machine is slow
    assert elapsed >= 19 * 0.02  # paced: 20 ticks of 20 ms
    t_obs = r.steps.column("t_obs_ns")
    queued = r.steps.column("action_source") == 1
    assert (np.diff(t_obs[queued]) > 0).all()
    # a queued action costs microseconds (0.07 ms when written): the median of them against 20 ms, far
    # over 5x, and a median so that one preemption on a shared machine cannot fail it
    assert np.median(r.steps.column("latency_ms")[queued]) < 20


# --------------------------------------------------------------------------------------------------
# budget
def test_plan_for_budget_picks_window_and_cap(tiny_policy, tmp_path, monkeypatch):
    monkeypatch.setenv("PARAPOLICY_CACHE_DIR", str(tmp_path))
    tiny_policy.set_sampler(SEQ10)
    sampler = SamplerConfig(num_inference_steps=10, algorithm="picard", window=2, max_iters=7)
    chosen, report = plan_for_budget(tiny_policy, sampler, budget_ms=50.0, candidates=(2, 4, 8))
    assert chosen.window in (2, 4, 8) and chosen.window == report["window"]
    assert 1 <= chosen.max_iters <= 7  # never above the sampler's own cap
    assert report["expected_ms"] > 0 and isinstance(report["meets_budget"], bool)
    assert tiny_policy.sampler == SEQ10  # the policy's sampler is left as it was
    same, rep = plan_for_budget(tiny_policy, SEQ10, budget_ms=50.0)
    assert same == SEQ10 and rep["changed"] is False


def test_auto_budget_runs_the_chosen_sampler_and_restores(tiny_policy, tmp_path, monkeypatch):
    monkeypatch.setenv("PARAPOLICY_CACHE_DIR", str(tmp_path))
    tiny_policy.set_sampler(PIC10)
    r = run_rollouts(tiny_policy, ec(n=1, steps=8), ControlConfig(budget_ms=40.0, auto_budget=True))
    assert r.budget is not None and r.sampler.window == r.budget["window"]
    assert r.sampler.max_iters == r.budget["max_iters"]
    assert tiny_policy.sampler == PIC10


# --------------------------------------------------------------------------------------------------
# records
def test_step_log_grows_and_writes_csv(tmp_path):
    log = StepLog(capacity=2)
    for i in range(5):
        log.append(
            episode=0,
            step=i,
            t_obs_ns=i,
            t_ready_ns=i + 1,
            deadline_ns=i + 10,
            latency_ms=1e-6,
            budget_ms=100.0,
            missed=False,
            action_source=i % 4,
            chunk=-1,
            model_evals=0.0,
            sequential_passes=0,
            picard_iters=0,
            converged=-1,
            final_residual=float("nan"),
            ticks_late=0,
            env_ms=0.1,
            batch_rows=0,
            action_change=float("nan"),
        )
    assert len(log) == 5 and list(log.column("step")) == [0, 1, 2, 3, 4]
    path = write_csv(log, tmp_path / "s.csv", {"sampler": "x"})
    lines = path.read_text().splitlines()
    assert lines[0].startswith("episode,step,t_obs_ns,t_ready_ns,deadline_ns,latency_ms,budget_ms,missed")
    assert lines[0].endswith(",sampler") and len(lines) == 6
    assert lines[2].split(",")[8] == "queued" and lines[1].split(",")[13] == ""  # converged n/a
    assert len(ChunkLog()) == 0
    p = percentiles([1.0, 2.0, 3.0, 100.0])
    assert p["p50_ms"] == 2.5 and p["max_ms"] == 100.0 and p["n"] == 4
    assert percentiles([])["p99_ms"] is None


def test_step_records_follow_the_definitions(tiny_policy):
    tiny_policy.set_sampler(PIC10_WS)
    r = run_rollouts(
        tiny_policy, ec(n=1, steps=20), ControlConfig(mode="realtime_sim", latency_model="fixed:130")
    )
    s = r.steps
    lat = (s.column("t_ready_ns") - s.column("t_obs_ns")) / 1e6
    assert np.allclose(lat, s.column("latency_ms"))
    assert np.array_equal(s.column("deadline_ns"), s.column("t_obs_ns") + 100_000_000)  # budget = period
    fresh = s.column("action_source") == 0
    assert (s.column("picard_iters")[fresh] > 0).all() and (s.column("picard_iters")[~fresh] == 0).all()
    assert (s.column("converged")[~fresh] == -1).all() and np.isnan(s.column("final_residual")[~fresh]).all()
    assert s.column("model_evals").sum() == pytest.approx(r.chunks.column("model_evals").sum())
    assert set(r.latency["sections"]) == {"observation", "denoiser", "sampler", "controller", "env_step"}
    assert r.latency["sections"]["denoiser"]["total_ms"] > 0


# --------------------------------------------------------------------------------------------------
# soak
def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def soak(policy, n_steps: int) -> tuple[dict[int, float], dict]:
    """One realtime_sim episode of ``n_steps`` control steps; RSS sampled along the way."""
    policy.set_sampler(SamplerConfig(num_inference_steps=4, algorithm="picard", window=4, warm_start=True))
    samples: dict[int, float] = {}
    done = {"n": 0}

    def on_steps(k: int) -> None:
        done["n"] += k
        if done["n"] % 250 == 0:
            samples[done["n"]] = rss_mb()

    r = run_rollouts(
        policy,
        ec(n=1, steps=n_steps),
        ControlConfig(mode="realtime_sim", latency_model="measured"),
        on_steps=on_steps,
        env_factory=lambda: PushTEnv(obs_type="keypoints", visualization_width=64, visualization_height=64),
    )
    assert r.per_episode[0]["n_steps"] == n_steps or r.per_episode[0]["success"]
    return samples, r.latency


def check_soak(samples: dict[int, float], latency: dict, max_growth_mb: float, max_drift: float | None):
    keys = sorted(samples)
    after_warm = samples[keys[1]]  # skip the first block: allocator and oneDNN caches settle
    growth = max(samples[k] for k in keys[1:]) - after_warm
    assert growth < max_growth_mb, f"RSS grew {growth:.1f} MB: {samples}"
    # 10th percentile of fresh-step latency, first vs last quarter: a foreign burst on the shared machine
    # slows some plans (it moves the median), growth inside the controller slows all of them
    if max_drift is not None:
        ratio = latency["drift"]["ratio_p10"]
        assert ratio is not None and ratio < max_drift, latency["drift"]


def test_soak_2000_steps_flat_memory(tiny_policy):
    samples, latency = soak(tiny_policy, 2000)
    # RSS only: the latency drift is a ratio of wall-clock times (0.7 measured on a loaded machine, 2.0
    # allowed), so it is checked in the slow soak, not in the default run
    check_soak(samples, latency, max_growth_mb=8.0, max_drift=None)


@pytest.mark.slow
def test_soak_10000_steps_flat_memory_no_drift(tiny_policy):
    samples, latency = soak(tiny_policy, 10_000)
    check_soak(samples, latency, max_growth_mb=12.0, max_drift=2.0)
