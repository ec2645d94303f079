"""Delay-aware stitching: known rows, expected delay, in-time requests, smoothness, and the controller."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import slow_denoiser

from parapolicy.envs import PushTEnv
from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.control.evaluation import EvalConfig
from parapolicy.policy.control.latency import SOURCE_CODE, StepLog
from parapolicy.policy.control.rollout import ControlConfig, run_rollouts
from parapolicy.policy.control.settings import LatencyModel
from parapolicy.policy.control.smoothness import smoothness
from parapolicy.policy.control.stitching import (
    DelayEstimator,
    executed_actions,
    expectation,
    in_time_request,
    known_rows,
)

SEQ10 = SamplerConfig(num_inference_steps=10)
PIC10 = SamplerConfig(num_inference_steps=10, algorithm="picard", window=4, tol=1e-6)


def ec(n=1, steps=30, batch=1) -> EvalConfig:
    return EvalConfig(n_episodes=n, batch_size=batch, max_steps=steps, max_videos=0, progress=False)


def rtc(i: int, committed: int, end: int) -> float:
    c = (end - i) / (end - committed + 1)
    return c * math.expm1(c) / math.expm1(1)


# --------------------------------------------------------------------------------------------------
# known rows
def test_known_rows_hand_checked():
    """Plan requested at 0 (15 rows, row j = tick j); new request at 8 with d = 3; H = 16, To = 2."""
    current = np.stack([np.arange(15.0), np.full(15, 7.0)], axis=1)  # (15, 2)
    k = known_rows(current, 8, 3, horizon=16, start=1, last_action=np.array([-1.0, -2.0]))
    assert k is not None and k.committed == 3
    # row 0 = tick 7 (the action sent), rows 1-3 = ticks 8-10 (committed), rows 4-7 = ticks 11-14 (overlap)
    assert np.array_equal(k.actions[0], [-1.0, -2.0])
    assert np.array_equal(k.actions[1:8, 0], np.arange(8.0, 15.0)) and not k.actions[8:].any()
    want = [1.0, 1.0, 1.0, 1.0] + [rtc(i, 3, 7) for i in range(3, 7)] + [0.0] * 8
    np.testing.assert_allclose(k.weight, want, rtol=1e-6)
    assert 0 < k.weight[7] < k.weight[4] < 1


def test_known_rows_without_the_overlap():
    current = np.stack([np.arange(15.0), np.full(15, 7.0)], axis=1)  # (15, 2)
    k = known_rows(current, 8, 3, horizon=16, start=1, last_action=np.array([-1.0, -2.0]), overlap="none")
    assert k is not None and k.committed == 3 and k.weight.tolist() == [1.0] * 4 + [0.0] * 12
    assert np.array_equal(k.actions[1:4, 0], [8.0, 9.0, 10.0])


def test_known_rows_linear_and_shorter_overlap():
    current = np.stack([np.arange(15.0), np.full(15, 7.0)], axis=1)  # (15, 2)
    k = known_rows(current, 8, 3, horizon=16, start=1, overlap="linear")
    assert k is not None and np.allclose(k.weight[1:8], [1, 1, 1, 4 / 5, 3 / 5, 2 / 5, 1 / 5])
    k = known_rows(current, 8, 3, horizon=16, start=1, overlap_rows=2)  # decay over rows 4, 5 only
    np.testing.assert_allclose(k.weight[1:8], [1, 1, 1, rtc(3, 3, 5), rtc(4, 3, 5), 0, 0], rtol=1e-6)
    with pytest.raises(ValueError, match=r"overlap in \(.exp., .linear., .none.\)"):
        known_rows(current, 8, 3, horizon=16, start=1, overlap="cubic")


def test_known_rows_when_the_current_plan_runs_out():
    current = np.zeros((15, 2))
    k = known_rows(current, 13, 4, horizon=16, start=1)  # rows for ticks 13, 14 only
    assert k is not None and k.committed == 2 and k.weight.tolist() == [0, 1, 1] + [0] * 13
    assert known_rows(current, 15, 4, horizon=16, start=1) is None  # nothing left, no last action
    with pytest.raises(ValueError, match="delay >= 0"):
        known_rows(current, 8, -1, horizon=16, start=1)


def test_known_rows_hold_the_last_action_after_the_current_plan_runs_out():
    """on_miss=hold: 2 rows left for d = 4, then the robot re-sends the last row (none left: last action)."""
    current = np.stack([np.arange(15.0), np.full(15, 7.0)], axis=1)  # (15, 2)
    k = known_rows(current, 13, 4, horizon=16, start=1, last_action=np.array([-1.0, -2.0]), hold=True)
    assert k is not None and k.committed == 4 and k.weight.tolist() == [1.0] * 5 + [0.0] * 11
    assert k.actions[:5, 0].tolist() == [-1.0, 13.0, 14.0, 14.0, 14.0]
    k = known_rows(current, 15, 3, horizon=16, start=1, last_action=np.array([-1.0, -2.0]), hold=True)
    assert k is not None and k.committed == 3 and k.actions[:4, 0].tolist() == [-1.0] * 4
    assert known_rows(current, 15, 3, horizon=16, start=1, hold=True) is None  # nothing to hold


def test_in_time_request():
    assert in_time_request(0, 15, 3, 1) == 11
    assert in_time_request(20, 15, 0, 0) == 35


# --------------------------------------------------------------------------------------------------
# expected delay
def test_delay_estimator_fixed_and_percentile():
    fixed = DelayEstimator(100.0, 90, 5, fixed_ms=250.0)
    fixed.observe(900.0)
    assert fixed.ticks() == 3 and fixed.latency_ms() == 250.0
    assert DelayEstimator(100.0, 90, 5, fixed_ms=300.0).ticks() == 3  # exactly 3 periods: arrives at s + 3
    est = DelayEstimator(100.0, 90, 5)
    assert est.ticks() == 0 and est.latency_ms() == 0.0
    for ms in (1000.0, 120.0, 130.0, 140.0, 150.0, 160.0, float("nan")):  # 1000 leaves the window of 5
        est.observe(ms)
    assert est.latency_ms() == pytest.approx(np.percentile([120, 130, 140, 150, 160], 90))
    assert est.ticks() == 2
    with pytest.raises(ValueError, match="percentile"):
        DelayEstimator(100.0, 101, 5)


def test_control_settings_validation():
    with pytest.raises(ValueError, match="control.stitch must be one of"):
        ControlConfig(stitch="blend")
    with pytest.raises(ValueError, match="control.stitch_overlap must be one of"):
        ControlConfig(stitch_overlap="cubic")
    with pytest.raises(ValueError, match="control.stitch_overlap_rows"):
        ControlConfig(stitch_overlap_rows=-1)
    with pytest.raises(ValueError, match="control.request must be one of"):
        ControlConfig(request="sometimes")
    with pytest.raises(ValueError, match="control.request_margin"):
        ControlConfig(request_margin=-1)
    with pytest.raises(ValueError, match="control.delay_percentile"):
        ControlConfig(delay_percentile=120)
    with pytest.raises(ValueError, match="control.delay_window"):
        ControlConfig(delay_window=0)


# --------------------------------------------------------------------------------------------------
# smoothness
def test_smoothness_hand_checked():
    log = StepLog()
    rows = [  # (episode, source, change)
        (0, "fresh", float("nan")),
        (0, "queued", 1.0),
        (0, "queued", 3.0),
        (0, "fresh", 10.0),
        (0, "held", 0.0),
        (1, "fresh", float("nan")),
        (1, "queued", 2.0),
        (1, "fresh", 4.0),
    ]
    for i, (ep, src, ch) in enumerate(rows):
        cols = dict.fromkeys(log.names, 0)
        cols.update(episode=ep, step=i, action_source=SOURCE_CODE[src], action_change=ch)
        log.append(**cols)
    s = smoothness(log)
    assert s["mean_change"] == pytest.approx(20 / 6) and s["max_change"] == 10.0
    assert s["boundary_mean_change"] == 7.0 and s["boundary_max_change"] == 10.0 and s["n_boundaries"] == 2
    assert s["inchunk_mean_change"] == 2.0 and s["boundary_ratio"] == 3.5
    s0 = smoothness(log, episode=0)
    assert s0["boundary_mean_change"] == 10.0 and s0["inchunk_mean_change"] == 2.0 and s0["n_boundaries"] == 1
    empty = smoothness(StepLog())
    assert empty["mean_change"] is None and empty["boundary_ratio"] is None


# --------------------------------------------------------------------------------------------------
# the controller
def spy_plans(policy):
    """Record every call's inpaint and sampled plan (environment units)."""
    real = policy.predict_action_chunk
    calls = []

    def spy(obs, noise=None, generator=None, x0_guess=None, inpaint=None):
        pred = real(obs, noise=noise, generator=generator, x0_guess=x0_guess, inpaint=inpaint)
        calls.append((inpaint, pred.plan.detach().clone()))
        return pred

    policy.__dict__["predict_action_chunk"] = spy
    return calls


@pytest.mark.parametrize("sampler", [SEQ10, PIC10], ids=["sequential", "picard"])
def test_realtime_sim_inpaint_continues_the_executed_rows(tiny_policy, sampler):
    """fixed:250 -> d = 3: each later plan's rows for the 3 committed ticks (and the tick before) equal
    the current plan's, and the plan's executed rows are recorded with expected = realised delay."""
    tiny_policy.set_sampler(sampler)
    calls = spy_plans(tiny_policy)
    control = ControlConfig(mode="realtime_sim", latency_model="fixed:250", warmup_plans=0, stitch="inpaint")
    r = run_rollouts(tiny_policy, ec(steps=30), control)
    start = tiny_policy.config.action_start
    assert calls[0][0] is None  # the first plan: the world waits, nothing to continue
    req = r.chunks.column("request_step")
    assert len(calls) == len(req) == 4
    for k in range(1, 4):
        (ip, plan), prev = calls[k], calls[k - 1][1]
        hard = ip.weight[0, :, 0] == 1  # (H,)
        assert hard.sum() == 4 and hard[start - 1 : start + 3].all()
        off = req[k] - req[k - 1]  # the previous plan's row of the request tick is start + off
        torch.testing.assert_close(
            plan[0, start : start + 3], prev[0, start + off : start + off + 3], rtol=0, atol=2e-3
        )
    assert list(r.chunks.column("expected_delay")) == [-1, 3, 3, 3]
    assert list(r.chunks.column("ticks_late")[1:]) == [3, 3, 3]
    assert list(r.chunks.column("inpainted_rows")) == [0, 4, 4, 4]
    assert list(r.chunks.column("expected_latency_ms")[1:]) == [250.0] * 3
    delay = r.latency["chunk"]["delay"]
    assert delay["n"] == 3 and delay["underestimated"] == 0 and delay["overestimated"] == 0
    drop = run_rollouts(tiny_policy, ec(steps=30), dataclasses.replace(control, stitch="drop"))
    assert list(drop.chunks.column("inpainted_rows")) == [0, 0, 0, 0]
    assert drop.per_episode != r.per_episode  # the stitching changed what the robot did


def test_frozen_mode_ignores_stitching(tiny_policy):
    tiny_policy.set_sampler(SEQ10)
    a = run_rollouts(tiny_policy, ec(n=2, steps=20, batch=2), ControlConfig(warmup_plans=0))
    b = run_rollouts(tiny_policy, ec(n=2, steps=20, batch=2), ControlConfig(warmup_plans=0, stitch="inpaint"))
    for ra, rb in zip(a.per_episode, b.per_episode, strict=True):  # misses depend on measured time
        assert {k: v for k, v in ra.items() if k != "deadline_misses"} == {
            k: v for k, v in rb.items() if k != "deadline_misses"
        }
    assert (b.chunks.column("expected_delay") == -1).all() and not b.chunks.column("inpainted_rows").any()


def test_realtime_sim_in_time_requests(tiny_policy):
    """d = 3, margin 1, 15 rows: request 11 ticks after the current plan's request (not every Ta = 8)."""
    tiny_policy.set_sampler(SEQ10)
    control = ControlConfig(mode="realtime_sim", latency_model="fixed:250", warmup_plans=0, request="in_time")
    r = run_rollouts(tiny_policy, ec(steps=30), control)
    assert list(r.chunks.column("request_step")) == [0, 11, 22]
    assert list(r.chunks.column("ready_step")) == [0, 14, 25]
    assert r.per_episode[0]["n_chunks"] == 3 and r.aggregated["mean_plans"] == 3
    assert r.per_episode[0]["held_steps"] == 0  # the robot never ran out of rows
    every = run_rollouts(tiny_policy, ec(steps=30), dataclasses.replace(control, request="every_ta"))
    assert list(every.chunks.column("request_step")) == [0, 8, 16, 24]


def test_realtime_sim_records_smoothness(tiny_policy):
    tiny_policy.set_sampler(SEQ10)
    control = ControlConfig(mode="realtime_sim", latency_model="fixed:250", warmup_plans=0)
    r = run_rollouts(tiny_policy, ec(n=2, steps=30), control)
    change = r.steps.column("action_change")
    first = r.steps.column("step") == 0
    assert np.isnan(change[first]).all() and np.isfinite(change[~first]).all()
    sm = r.aggregated["smoothness"]
    assert sm["n_boundaries"] == 2 * 3 and sm["max_change"] == pytest.approx(float(change[~first].max()))
    for rec in r.per_episode:
        assert rec["boundary_max_change"] <= rec["max_change"]


@pytest.mark.parametrize("request_rule", ["every_ta", "in_time"])
def test_wallclock_inpaint_with_real_threads(tiny_policy, request_rule):
    """50 Hz, 4-step plans of >= 4 x 15 ms (>= 3 ticks): the running estimate sets d; plans continue."""
    tiny_policy.set_sampler(SamplerConfig(num_inference_steps=4, window=4))
    slow_denoiser(tiny_policy, 15)
    calls = spy_plans(tiny_policy)
    control = ControlConfig(
        mode="wallclock", hz=50, warmup_plans=1, stitch="inpaint", request=request_rule, delay_percentile=100
    )
    r = run_rollouts(tiny_policy, ec(steps=40), control)
    ep = r.per_episode[0]
    assert ep["n_steps"] == 40 and not ep["stopped"] and ep["n_chunks"] >= 3
    exp, late = r.chunks.column("expected_delay"), r.chunks.column("ticks_late")
    assert exp[0] == -1 and (exp[1:] >= 3).all() and (late[1:] >= 3).all()
    assert (r.chunks.column("expected_latency_ms")[1:] >= 60).all()
    assert (r.chunks.column("inpainted_rows")[1:] >= 2).all()
    assert all(ip is not None for ip, _ in calls[2:])  # calls[0] is the warm-up, calls[1] the first plan


@pytest.mark.parametrize("sampler", [SEQ10, PIC10], ids=["sequential", "picard"])
def test_realtime_sim_with_a_fixed_model_runs_batched_with_the_same_results(tiny_policy, sampler):
    tiny_policy.set_sampler(sampler)
    control = ControlConfig(mode="realtime_sim", latency_model="fixed:350", warmup_plans=0, stitch="inpaint")
    one = run_rollouts(tiny_policy, ec(n=3, steps=30, batch=1), control)
    three = run_rollouts(tiny_policy, ec(n=3, steps=30, batch=3), control)
    assert one.latency["batch_size"] == 1 and three.latency["batch_size"] == 3
    assert set(three.chunks.column("batch_rows")) == {3}
    for a, b in zip(one.per_episode, three.per_episode, strict=True):
        assert a["n_chunks"] == b["n_chunks"] and a["ticks_lost"] == b["ticks_lost"]
        assert a["sum_reward"] == pytest.approx(b["sum_reward"], abs=1e-4)
    order = [np.lexsort((r.steps.column("step"), r.steps.column("episode"))) for r in (one, three)]
    np.testing.assert_allclose(  # the batched run interleaves the episodes' steps: order by (episode, step)
        one.steps.column("action_change")[order[0]], three.steps.column("action_change")[order[1]], atol=1e-2
    )
    measured = run_rollouts(
        tiny_policy, ec(n=2, steps=10, batch=2), dataclasses.replace(control, latency_model="measured")
    )
    assert measured.latency["batch_size"] == 1  # measured latency: one plan at a time
    capped = run_rollouts(tiny_policy, ec(n=2, steps=10, batch=50), control)
    assert capped.latency["batch_size"] == 2 and set(capped.chunks.column("batch_rows")) == {2}  # as ran


class ActionLog(PushTEnv):
    """PushT (keypoints) that records every action it executes, by tick."""

    def __init__(self) -> None:
        super().__init__(obs_type="keypoints", visualization_width=64, visualization_height=64)
        self.actions: list[np.ndarray] = []

    def step(self, action):
        self.actions.append(np.asarray(action, dtype=np.float64).copy())
        return super().step(action)


def run_logged(policy, env_class, control: ControlConfig, steps: int = 40):
    """One episode of ``steps`` in an instrumented env: the rollout result and the env."""
    envs = []

    def make():
        envs.append(env_class())
        return envs[-1]

    return run_rollouts(policy, ec(steps=steps), control, env_factory=make), envs[0]


@pytest.mark.parametrize(
    ("ta", "request_rule", "tail"),
    [(8, "every_ta", True), (4, "every_ta", True), (8, "in_time", True), (4, "every_ta", False)],
    ids=["ta8", "ta4-always-in-flight", "in-time", "ta4-no-tail"],
)
def test_imposed_rows_are_the_actions_executed_at_their_ticks(tiny_policy, ta, request_rule, tail):
    """d = 4 (fixed:350, 10 Hz), To = 2: the plan requested at tick s is sampled with its rows To-1 ..
    To-1+3 imposed (weight 1, normalised with the action normaliser) at exactly the actions the env
    executes at ticks s .. s+3, and row To-2 at the action of tick s-1; the overlap rows hold what the
    current plan would execute at their ticks. Checked against the env's own record of its actions."""
    tiny_policy.set_sampler(PIC10)
    calls = spy_plans(tiny_policy)
    control = ControlConfig(
        mode="realtime_sim",
        latency_model="fixed:350",
        warmup_plans=0,
        stitch="inpaint",
        n_action_steps=ta,
        request=request_rule,
        use_plan_tail=tail,
    )
    r, env = run_logged(tiny_policy, ActionLog, control)
    executed = np.stack(env.actions)  # (T, Da), row t = tick t
    start, unnorm = tiny_policy.config.action_start, tiny_policy.normalizer.unnormalize
    req = r.chunks.column("request_step")
    assert len(calls) >= len(req) >= 4 and (r.chunks.column("ticks_late")[1:] == 4).all()  # (+ one in flight)
    plans = [p[0].numpy() for _, p in calls]  # (H, Da) each, environment units
    for k in range(1, len(req)):
        ip, s = calls[k][0], int(req[k])
        w, target = ip.weight[0, :, 0].numpy(), unnorm("action", ip.target)[0].numpy()  # (H,), (H, Da)
        committed = [i for i in range(4) if s + i < len(executed)]
        hard = np.flatnonzero(w == 1)
        assert list(hard) == [start - 1] + [start + i for i in committed]
        np.testing.assert_allclose(target[start - 1], executed[s - 1], atol=1e-3)
        np.testing.assert_allclose(
            target[start : start + len(committed)], executed[s : s + len(committed)], atol=1e-3
        )
        prev, prev_s = plans[k - 1], int(req[k - 1])
        soft = np.flatnonzero((w > 0) & (w < 1))  # the rest of the current plan, at its ticks
        np.testing.assert_allclose(target[soft], prev[start + s - prev_s + soft - start], atol=1e-3)


# --------------------------------------------------------------------------------------------------
# forecast=robot
class PusherLog(ActionLog):
    """`ActionLog` that also records every observation (row t: the state after tick t's action, i.e.
    of tick t + 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.observations: list[np.ndarray] = []

    def step(self, action):
        out = super().step(action)
        self.observations.append(np.asarray(out[0], dtype=np.float64).copy())
        return out


def spy_observations(policy):
    """Record every call's observation history (environment units) and inpaint."""
    real = policy.predict_action_chunk
    calls = []

    def spy(obs, noise=None, generator=None, x0_guess=None, inpaint=None):
        calls.append((next(iter(obs.values())).detach().clone().double().numpy(), inpaint))
        return real(obs, noise=noise, generator=generator, x0_guess=x0_guess, inpaint=inpaint)

    policy.__dict__["predict_action_chunk"] = spy
    return calls


@pytest.mark.parametrize("stitch", ["drop", "inpaint"])
def test_forecast_conditions_each_plan_on_the_pusher_at_its_first_tick(tiny_policy, stitch):
    """d = 4 (fixed:350): a plan requested at tick s starts at s + 4 and sees the pusher exactly where it
    is at ticks s + 3 and s + 4 (the task's forecast through the 4 actions executed meanwhile) and the
    block as observed at s; it arrives on time, so nothing is dropped. With inpainting it continues the
    action of tick s + 3 (row To - 2), and nothing else is imposed."""
    tiny_policy.set_sampler(PIC10)
    calls = spy_observations(tiny_policy)
    control = ControlConfig(
        mode="realtime_sim",
        latency_model="fixed:350",
        warmup_plans=0,
        forecast="robot",
        stitch=stitch,
        stitch_overlap="none",
    )
    r, env = run_logged(tiny_policy, PusherLog, control)
    seen, executed = np.stack(env.observations), np.stack(env.actions)  # (T, 20), (T, 2)
    firsts, asked = r.chunks.column("start_step"), r.chunks.column("request_step")
    assert len(firsts) >= 4 and list(r.chunks.column("expected_delay")[1:]) == [4] * (len(firsts) - 1)
    assert list(firsts[1:] - asked[1:]) == [4] * (len(firsts) - 1)
    assert (r.chunks.column("ticks_late") == 0).all() and r.per_episode[0]["ticks_lost"] == 0
    assert list(r.chunks.column("delay_ticks")[1:]) == [4] * (len(firsts) - 1)  # realised as expected
    delay = r.latency["chunk"]["delay"]
    assert delay["mean_realised"] == delay["mean_expected"] == 4 and delay["overestimated"] == 0
    fresh = r.steps.column("action_source") == 0  # a fresh step's decision started at its request tick
    assert (r.steps.column("ticks_late")[fresh] == 0).all()  # counted from the plan's first tick
    ticks = r.steps.column("step")[fresh][1:].astype(np.int64)
    asked_ns = r.steps.column("t_obs_ns")[fresh][1:]
    np.testing.assert_array_equal(asked_ns, (ticks - 4) * 100_000_000)
    np.testing.assert_array_equal(r.steps.column("t_ready_ns")[fresh][1:], asked_ns + 350_000_000)
    assert r.latency["forecast"] == "robot"
    start = tiny_policy.config.action_start
    for k in range(1, len(firsts)):
        history, ip = calls[k]
        first = int(firsts[k])  # the plan's first tick; requested at first - 4
        if first > len(seen):
            continue  # requested near the end: the episode stopped before its first tick
        # the policy's observation is float32: equal up to its rounding
        np.testing.assert_allclose(history[0, -1, -2:], seen[first - 1, -2:], atol=1e-3)  # pusher at first
        np.testing.assert_allclose(history[0, -2, -2:], seen[first - 2, -2:], atol=1e-3)
        np.testing.assert_allclose(history[0, -1, :18], seen[first - 5, :18], atol=1e-3)  # block as seen at s
        if stitch == "drop":
            assert ip is None
        else:
            w = ip.weight[0, :, 0].numpy()
            assert list(np.flatnonzero(w)) == [start - 1]
            target = tiny_policy.normalizer.unnormalize("action", ip.target)[0].numpy()
            np.testing.assert_allclose(target[start - 1], executed[first - 1], atol=1e-3)


@pytest.mark.parametrize("forecast", ["robot", "robot_and_block"])
def test_forecast_in_wallclock_mode_with_real_threads(tiny_policy, forecast):
    """50 Hz, plans of >= 3 ticks: each plan starts where its forecast was made for, never earlier."""
    tiny_policy.set_sampler(SamplerConfig(num_inference_steps=4, window=4))
    slow_denoiser(tiny_policy, 15)
    control = ControlConfig(mode="wallclock", hz=50, warmup_plans=1, forecast=forecast, delay_percentile=100)
    r = run_rollouts(tiny_policy, ec(steps=40), control)
    ep = r.per_episode[0]
    assert ep["n_steps"] == 40 and not ep["stopped"] and ep["n_chunks"] >= 3
    exp, late = r.chunks.column("expected_delay"), r.chunks.column("ticks_late")
    assert exp[0] == -1 and (exp[1:] >= 3).all() and (late >= 0).all()


def test_a_forecast_plan_faster_than_expected_starts_at_its_first_tick(tiny_policy, monkeypatch):
    """Latencies 450, 120, 450, 120 ... ms: the expected delay is 5 ticks (the 90th percentile), so a
    120 ms plan is ready 3 ticks before the tick it was planned from. It waits for that tick and runs
    its rows in order from there (installed early it would run rows from the end of the plan)."""
    tiny_policy.set_sampler(SEQ10)
    cycle = iter([450.0, 120.0] * 100)
    monkeypatch.setattr(LatencyModel, "latency_ms", lambda self, measured, rows: next(cycle))
    plans = spy_plans(tiny_policy)
    control = ControlConfig(mode="realtime_sim", latency_model="per_call:1", warmup_plans=0, forecast="robot")
    r, env = run_logged(tiny_policy, ActionLog, control)
    executed = np.stack(env.actions)  # (T, 2)
    steps, chunk = r.steps.column("step").astype(int), r.steps.column("chunk").astype(int)
    first_ticks = r.chunks.column("start_step").astype(int)
    early = np.ceil(r.chunks.column("latency_ms") / 100) < r.chunks.column("expected_delay")
    assert early[1:].any()  # the case under test happens
    start = tiny_policy.config.action_start
    for tick, k in zip(steps, chunk, strict=True):
        if k < 1:
            continue
        row = tick - first_ticks[k]
        assert row >= 0, (tick, k)  # never before its first tick
        np.testing.assert_allclose(executed[tick], plans[k][1][0, start + row].numpy(), atol=1e-5)


def test_executed_actions_and_the_forecast_expectation():
    current = np.stack([np.arange(10.0), np.zeros(10)], axis=1)  # (10, 2)
    np.testing.assert_array_equal(executed_actions((current, 7), 4, None)[:, 0], [7, 8, 9, 9])
    np.testing.assert_array_equal(executed_actions(None, 2, np.array([3.0, 4.0])), [[3, 4], [3, 4]])
    assert executed_actions(None, 2, None) is None
    est = DelayEstimator(100.0, 90.0, 5, fixed_ms=350.0)
    x = expectation(est, True, (current, 2), 16, 1, np.array([1.0, 0.0]), "none", forecast=True)
    assert x.start_offset == 4 and x.forecast[:, 0].tolist() == [2, 3, 4, 5]
    assert x.known is not None and x.known.committed == 0 and list(np.flatnonzero(x.known.weight)) == [0]
    assert x.known.actions[0, 0] == 5  # the last action executed before the plan starts
    overlap = expectation(est, True, (current, 2), 16, 1, np.array([1.0, 0.0]), "exp", forecast=True)
    # with the overlap, the plan is pulled toward the current plan's rows from its own first tick on:
    # rows 2 + 4 = 6, 7, 8, 9 of the current plan (not 2, 3, 4, 5, already executed by then)
    assert overlap.known.actions[0, 0] == 5 and overlap.known.actions[1:5, 0].tolist() == [6, 7, 8, 9]
    assert (overlap.known.weight[1:5] > 0).all()
    plain = expectation(est, True, (current, 2), 16, 1, np.array([1.0, 0.0]), "none")
    assert plain.start_offset == 0 and plain.forecast is None and plain.known.committed == 4
