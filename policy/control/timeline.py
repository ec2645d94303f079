"""The tick timeline: which action each control step executes, and when plans arrive.

`Timeline.run_ticks` steps a lockstep batch of episodes tick by tick (``frozen``: plans arrive at once;
``realtime_sim``: a plan requested at tick s arrives at ``s + ceil(latency / period)``).
`Timeline.run_wallclock` paces one episode by the real clock and plans on a background thread. Every
tick chooses the action (the current plan's next row, else hold/fallback/stop per ``on_miss``), steps
the env through the `Task`, and appends the step row and the episode counters. Each request carries
the plan's `stitching.Expectation` (expected delay; with ``stitch=inpaint`` the rows it must
continue); ``request=in_time`` moves the next request to when the current plan's rows run low;
``forecast=robot`` conditions the plan on the task's forecast of the robot's state at the plan's first
tick (the request tick + the expected delay) and installs it there at the earliest.
Semantics: ``docs/control_modes.md``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from parapolicy.policy.control.episode import Episode
from parapolicy.policy.control.faults import Fault
from parapolicy.policy.control.latency import SOURCE_CODE, ChunkLog, SectionTimer, StepLog
from parapolicy.policy.control.planner import Planner
from parapolicy.policy.control.records import Plan
from parapolicy.policy.control.settings import ControlConfig
from parapolicy.policy.control.smoothness import action_change
from parapolicy.policy.control.stitching import DelayEstimator, Expectation, expectation, in_time_request
from parapolicy.policy.control.task import Task
from parapolicy.policy.model.image_observation import history_observation


@dataclass
class _Choice:
    """The action of one tick and where it came from."""

    action: np.ndarray  # (Da,)
    source: str
    missed: bool
    plan: Plan | None = None
    row: int = -1
    fresh: bool = False


class Timeline:
    """Runs the ticks of episodes; see the module docstring.

    Args:
        planner: makes the plans.
        control: the controller settings.
        task: the environment's task (stepping, score, safe action, rendering).
        Ta: actions executed per plan.
        max_steps: control steps per episode at most.
        logs: the run's step log, chunk log and section timer (appended to).
        on_steps: progress callback with the number of steps done.
    """

    def __init__(
        self,
        planner: Planner,
        control: ControlConfig,
        task: Task,
        Ta: int,
        max_steps: int,
        logs: tuple[StepLog, ChunkLog, SectionTimer],
        on_steps: Callable[[int], None] | None = None,
    ) -> None:
        self.planner, self.control, self.task = planner, control, task
        self.Ta, self.max_steps = Ta, max_steps
        self.steps, self.chunks, self.sections = logs
        self.on_steps = on_steps
        self.period_ms = control.period_ms
        self.period_ns = int(round(control.period_ms * 1e6))
        self.budget_ms = control.effective_budget_ms
        model = planner.model
        fixed = model.ms if model.kind == "fixed" else None
        self.delay = DelayEstimator(self.period_ms, control.delay_percentile, control.delay_window, fixed)
        if control.forecast == "robot_and_block" and control.mode != "frozen":
            task.prepare_object_forecast()  # before any episode: a task that cannot says why

    # ---------------------------------------------------------------------------------------------
    # plans
    def ticks_late(self, plan: Plan, first_plan: bool) -> int:
        """Ticks from a plan's request to its arrival (0 in frozen mode and for a waited-for first plan)."""
        if self.control.mode == "frozen" or (first_plan and self.control.wait_first_plan):
            return 0
        return max(0, math.ceil(plan.latency_ms / self.period_ms - 1e-9))

    def expectation(self, e: Episode) -> Expectation:
        """What a plan requested now should expect (on the ticking thread; wallclock snapshots it)."""
        if self.control.mode == "frozen" or (e.n_chunks == 0 and self.control.wait_first_plan):
            return Expectation()  # the world waits for this plan
        cfg = self.planner.policy.config
        current = None if e.plan is None else (e.plan.actions, e.plan.next_row)  # next_row: this tick's
        c = self.control
        return expectation(
            self.delay,
            c.stitch == "inpaint",
            current,
            cfg.horizon,
            cfg.action_start,
            e.last_target,
            c.stitch_overlap,
            c.on_miss == "hold",
            c.stitch_overlap_rows,
            c.forecast != "none",
        )

    def history(self, e: Episode, expect: Expectation) -> dict[str, np.ndarray]:
        """The policy's To-step observation for a plan expecting ``expect``: the episode's history, then
        (``control.forecast=robot`` / ``robot_and_block``) the task's forecast through the actions executed
        before it starts."""
        if expect.forecast is None:
            return history_observation(e.history)
        frames = deque(e.history, maxlen=len(e.history))
        objects = self.control.forecast == "robot_and_block"
        frames.extend(self.task.forecast(e.env, e.history[-1], expect.forecast, objects=objects))
        return history_observation(frames)

    def install(self, e: Episode, p: Plan, tick: int) -> None:
        """Make ``p`` the episode's current plan at ``tick`` (stale rows skipped) or register its fault."""
        self.chunks.append(**p.chunk_row(e.ix, tick, self.budget_ms))
        e.record.n_chunks += 1
        if p.fault is not Fault.NONE:
            e.record.count_fault(p.fault)
            e.plan = None
            e.fault_now = p.fault
            e.next_request = tick + 1  # replan from the next observation
            return
        self.delay.observe(p.latency_ms)
        skip = tick - p.start
        if skip >= len(p.actions):
            skip = len(p.actions) - 1  # every action is in the past: execute the last one now
        e.record.ticks_lost += skip
        p.next_row = skip
        p.arrival = tick
        e.plan = p
        if self.control.request == "in_time" and self.control.mode != "frozen":
            d, margin = self.delay.ticks(), self.control.request_margin
            e.next_request = in_time_request(p.start, len(p.actions), d, margin)

    # ---------------------------------------------------------------------------------------------
    # one control step
    def _choose(self, e: Episode) -> _Choice | None:
        """The action of ``e``'s current tick; None when ``on_miss=stop`` ends the episode."""
        if e.fault_now is not Fault.NONE:
            e.fault_now = Fault.NONE
            return _Choice(self.task.safe_action(e.obs, e.info), "fallback", True)
        plan = e.plan
        if plan is not None and plan.next_row < len(plan.actions):
            row = plan.next_row
            plan.next_row += 1
            fresh = not plan.used
            plan.used = True
            missed = fresh and plan.latency_ms > self.budget_ms
            return _Choice(plan.actions[row], "fresh" if fresh else "queued", missed, plan, row, fresh)
        on_miss = self.control.on_miss  # starved: no planned action for this tick
        if on_miss == "stop":
            e.record.deadline_misses += 1
            self._stop(e, "deadline_miss")
            return None
        if on_miss == "hold" and e.last_target is not None:
            return _Choice(e.last_target, "held", True)
        source = "held" if on_miss == "hold" else "fallback"
        return _Choice(self.task.safe_action(e.obs, e.info), source, True)

    def act(self, e: Episode, tick_ns: int, sim: bool) -> None:
        """Choose the action of ``e``'s current tick, step the env, record the step."""
        t0 = time.perf_counter_ns()
        c = self._choose(e)
        if c is None:
            return
        if not np.isfinite(c.action).all():  # belt and braces: nothing non-finite reaches the env
            c = _Choice(self.task.safe_action(e.obs, e.info), "fallback", True)
        change = action_change(e.last_target, c.action)
        t_ready = time.perf_counter_ns()
        self.sections.add("controller", t_ready - t0)
        t_env = time.perf_counter_ns()
        obs, reward, terminated, _, info = e.env.step(c.action)
        env_ns = time.perf_counter_ns() - t_env
        self.sections.add("env_step", env_ns)
        t_hist = time.perf_counter_ns()
        e.obs, e.info = obs, info
        e.history.append(self.task.observation(obs, info))
        self.sections.add("observation", time.perf_counter_ns() - t_hist)
        e.last_target = np.asarray(c.action, dtype=np.float64)
        self._record_step(e, c, (t0, t_ready, tick_ns, env_ns), sim, change)
        self._count_step(e, c, reward, info, bool(terminated))

    def _record_step(
        self, e: Episode, c: _Choice, times: tuple[int, int, int, int], sim: bool, change: float
    ) -> None:
        """Append the step row (see `latency` for the columns)."""
        t0, t_ready, tick_ns, env_ns = times
        p = c.plan
        if c.fresh and p is not None:
            if sim:
                t_obs = p.request * self.period_ns
                t_rdy = t_obs + int(round(p.latency_ms * 1e6))
            else:
                t_obs, t_rdy = p.t_obs_ns, p.t_ready_ns
            st = p.stats
            stats = (st.model_evals, st.sequential_passes, st.picard_iters, st.converged, st.final_residual)
            ticks_late = e.tick - p.start
        else:
            t_obs = tick_ns if sim else t0
            t_rdy = t_obs + (t_ready - t0)
            stats = (0.0, 0, 0, -1, float("nan"))
            ticks_late = 0
        self.steps.append(
            episode=e.ix,
            step=e.tick,
            t_obs_ns=t_obs,
            t_ready_ns=t_rdy,
            deadline_ns=t_obs + int(round(self.budget_ms * 1e6)),
            latency_ms=(t_rdy - t_obs) / 1e6,
            budget_ms=self.budget_ms,
            missed=c.missed,
            action_source=SOURCE_CODE[c.source],
            chunk=p.chunk if p is not None else -1,
            model_evals=stats[0],
            sequential_passes=stats[1],
            picard_iters=stats[2],
            converged=stats[3],
            final_residual=stats[4],
            ticks_late=ticks_late,
            env_ms=env_ns / 1e6,
            batch_rows=p.batch_rows if p is not None else 0,
            action_change=change,
        )

    def _count_step(self, e: Episode, c: _Choice, reward: float, info: dict, terminated: bool) -> None:
        """Update the episode's counters and outcome; end it on termination, the step limit or misses."""
        rec = e.record
        rec.count_source(c.source)
        if c.plan is not None and c.row >= self.Ta:
            rec.tail_steps += 1
        if c.missed:
            rec.deadline_misses += 1
            e.consecutive += 1
        else:
            e.consecutive = 0
        score = self.task.score(reward, info)
        rec.add_step(score.reward, score.progress, score.success)
        if e.frames is not None:
            e.frames.append(e.env.render())
        e.tick += 1
        if self.on_steps is not None:
            self.on_steps(1)
        limit = self.control.max_consecutive_misses
        if terminated or rec.n_steps >= self.max_steps:
            e.done = True
        elif limit is not None and e.consecutive >= limit:
            self._stop(e, "max_consecutive_misses")

    def _stop(self, e: Episode, reason: str) -> None:
        e.done = True
        e.record.stop(reason, e.tick)

    # ---------------------------------------------------------------------------------------------
    # frozen and realtime_sim: a tick loop over a lockstep batch of episodes
    def run_ticks(self, episodes: list[Episode]) -> None:
        """Run ``episodes`` in lockstep to their end (frozen or realtime_sim)."""
        sim = self.control.mode == "realtime_sim"
        active = list(episodes)
        while active:
            for e in active:  # plans whose (simulated) latency has elapsed
                if e.pending is not None and e.pending.arrival <= e.tick:
                    plan, e.pending = e.pending, None
                    self.install(e, plan, e.tick)
            need = [e for e in active if e.pending is None and e.tick >= e.next_request]
            if need:
                self._request(need)
            for e in active:
                self.act(e, e.tick * self.period_ns, sim)
            active = [e for e in active if not e.done]

    def _request(self, need: list[Episode]) -> None:
        """Plan for ``need`` at their current ticks; install the plans that arrive at once."""
        expect = [self.expectation(e) for e in need]
        hist_ns = time.perf_counter_ns()
        histories = [self.history(e, x) for e, x in zip(need, expect, strict=True)]  # (To, ...) per key
        self.sections.add("observation", time.perf_counter_ns() - hist_ns)
        starts = [e.tick + x.start_offset for e, x in zip(need, expect, strict=True)]  # first ticks
        plans = self.planner.plan(need, starts, histories, expect)
        for e, plan in zip(need, plans, strict=True):
            # a forecast plan is installed at its first tick at the earliest
            plan.arrival = max(e.tick + self.ticks_late(plan, plan.chunk == 0), plan.start)
            e.next_request = e.tick + self.Ta
            if plan.arrival <= e.tick:
                self.install(e, plan, e.tick)
            else:
                e.pending = plan

    # ---------------------------------------------------------------------------------------------
    # wallclock: paced loop, planning on a background thread
    def _submit(self, pool: ThreadPoolExecutor, e: Episode) -> Future:
        tick = e.tick
        t_req = time.perf_counter_ns()
        expect = self.expectation(e)
        history = self.history(e, expect)  # a copy: the main thread keeps appending
        start = tick + expect.start_offset  # the plan's first tick

        def job() -> Plan:
            plan = self.planner.plan([e], [start], [history], [expect])[0]
            plan.t_obs_ns = t_req  # latency counts from the request, queueing included
            if self.planner.model.kind == "measured":
                plan.latency_ms = (plan.t_ready_ns - t_req) / 1e6
            return plan

        e.next_request = tick + self.Ta
        return pool.submit(job)

    def run_wallclock(self, e: Episode, pool: ThreadPoolExecutor) -> None:
        """Run one episode paced by the real clock, planning on ``pool``'s thread."""
        future: Future | None = None
        if self.control.wait_first_plan:
            self.install(e, self._submit(pool, e).result(), 0)
        t_zero = time.perf_counter_ns()
        try:
            while not e.done:
                tick_ns = t_zero + e.tick * self.period_ns
                now = time.perf_counter_ns()
                if now < tick_ns:
                    time.sleep((tick_ns - now) / 1e9)
                elif now - tick_ns > self.period_ns:
                    e.record.pacing_overruns += 1  # the loop itself fell a whole tick behind
                if future is not None and future.done():
                    e.pending, future = future.result(), None
                if e.pending is not None and e.pending.start <= e.tick:  # a forecast plan: its first tick
                    self.install(e, e.pending, e.tick)
                    e.pending = None
                if future is None and e.pending is None and e.tick >= e.next_request:
                    future = self._submit(pool, e)
                self.act(e, tick_ns, sim=False)
        finally:
            if future is not None:
                future.result()  # let the in-flight plan finish before the next episode starts
