"""The closed-loop controller: runs episodes of one policy under one `ControlConfig` on any `Task`.

It owns a run: it makes each episode (env, start state, noise generator, record) through the `Task`,
installs the timed denoiser (`runtime.timing.timed_denoiser`) for the run, hands the episodes to the
`timeline.Timeline` (which asks the `planner.Planner` for plans), writes videos, and aggregates the
records into a `records.RolloutResult`. It knows nothing of a particular environment.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.control.episode import Episode
from parapolicy.policy.control.evaluation import EvalConfig, aggregate, episode_generator
from parapolicy.policy.control.latency import ChunkLog, SectionTimer, StepLog, latency_summary
from parapolicy.policy.control.planner import Planner
from parapolicy.policy.control.records import TOTAL_COUNTERS, EpisodeRecord, RolloutResult
from parapolicy.policy.control.settings import ControlConfig, LatencyModel
from parapolicy.policy.control.smoothness import smoothness
from parapolicy.policy.control.task import Task, check_task_serves
from parapolicy.policy.control.timeline import Timeline
from parapolicy.policy.model.policy import DiffusionPolicy
from parapolicy.policy.runtime.gc_freeze import frozen_heap
from parapolicy.policy.runtime.timing import timed_denoiser

EpisodeCallback = Callable[[dict[str, Any]], None]


class Controller:
    """Runs episodes of one policy under one `ControlConfig` on one `Task`; see the module docstring.

    Args:
        policy: the policy (its current sampler is used).
        control: the controller settings.
        eval_cfg: episodes, seeds, batching (``frozen`` only), videos, noise seed.
        task: the environment, serving the policy's observations (`tasks.task_for_policy`).
    """

    def __init__(
        self, policy: DiffusionPolicy, control: ControlConfig, eval_cfg: EvalConfig, task: Task
    ) -> None:
        check_policy_settings(policy, control, [policy.sampler])
        check_task_serves(task, policy.config)
        cfg = policy.config
        self.policy, self.control, self.eval_cfg, self.task = policy, control, eval_cfg, task
        self.To = cfg.n_obs_steps
        self.Ta = control.n_action_steps or cfg.n_action_steps
        self.n_rows = cfg.max_action_steps if control.use_plan_tail else self.Ta

    def run(
        self,
        video_dir: Path | None = None,
        video_prefix: str = "eval_episode_",
        on_steps: Callable[[int], None] | None = None,
        on_episode: EpisodeCallback | None = None,
    ) -> RolloutResult:
        """Run ``eval_cfg.n_episodes`` episodes and return their records, logs and summaries.

        Args:
            video_dir: where ``<video_prefix><i>.mp4`` of the first ``eval_cfg.max_videos`` episodes go.
            video_prefix: file name prefix of the videos.
            on_steps: called with the number of control steps done since the last call (progress);
                an episode that ends early reports its unused steps too, so the total is
                ``n_episodes * max_steps``.
            on_episode: called with each finished episode's record (`EpisodeRecord.as_dict`).
        """
        ec, control = self.eval_cfg, self.control
        if video_dir is not None and ec.max_videos:
            self.task.check_video_output(Path(video_dir))  # fail before the rollouts, not after
        logs = (StepLog(), ChunkLog(), SectionTimer())
        planner = Planner(self.policy, control, self.n_rows, logs[2])
        timeline = Timeline(planner, control, self.task, self.Ta, ec.max_steps, logs, on_steps)
        start, cpu_start = time.perf_counter(), time.process_time()
        batch = min(ec.batch_size, ec.n_episodes) if _lockstep(control) else 1  # episodes per planning call
        pool = ThreadPoolExecutor(1, thread_name_prefix="planner") if control.mode == "wallclock" else None
        try:
            with frozen_heap(), timed_denoiser(self.policy) as timer:
                planner.timer = timer
                warmup_ms = self._warmup(planner, batch, pool)
                records = self._episodes(timeline, batch, pool, video_dir, video_prefix, on_episode)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
        agg = aggregate_episodes(records, time.perf_counter() - start, time.process_time() - cpu_start)
        agg["smoothness"] = smoothness(logs[0])
        lat = latency_summary(logs[0], logs[1], control.effective_budget_ms, warmup_ms, logs[2])
        lat.update(mode=control.mode, hz=control.hz, latency_model=control.latency_model, batch_size=batch)
        lat.update(stitch=control.stitch, request=control.request, forecast=control.forecast)
        return RolloutResult(
            mode=control.mode,
            per_episode=records,
            aggregated=agg,
            steps=logs[0],
            chunks=logs[1],
            sections=logs[2],
            warmup_ms=warmup_ms,
            latency=lat,
            sampler=self.policy.sampler,
        )

    def _episodes(
        self,
        timeline: Timeline,
        batch: int,
        pool: ThreadPoolExecutor | None,
        video_dir: Path | None,
        video_prefix: str,
        on_episode: EpisodeCallback | None,
    ) -> list[dict[str, Any]]:
        """Run the episodes in batches of ``batch`` (lockstep) and return their records, by index."""
        ec = self.eval_cfg
        records: list[dict[str, Any]] = []
        for first in range(0, ec.n_episodes, batch):
            episodes = [
                self._new_episode(i, video_dir) for i in range(first, min(first + batch, ec.n_episodes))
            ]
            if pool is not None:
                timeline.run_wallclock(episodes[0], pool)
            else:
                timeline.run_ticks(episodes)
            for e in episodes:
                e.record.set_smoothness(smoothness(timeline.steps, e.ix))
                rec = self._finish_episode(e, video_dir, video_prefix, timeline.on_steps)
                records.append(rec)
                if on_episode is not None:
                    on_episode(rec)
        records.sort(key=lambda r: r["episode_ix"])
        return records

    def _warmup(self, planner: Planner, rows: int, pool: ThreadPoolExecutor | None) -> list[float]:
        """Time ``warmup_plans`` plans on the first episode's initial observation."""
        if self.control.warmup_plans == 0:
            return []
        env = self.task.make_env(self.eval_cfg.video_size)
        obs, info = self.task.reset(env, self.eval_cfg.start_seed)
        env.close()
        return planner.warmup(self.task.observation(obs, info), rows, self.control.warmup_plans, pool)

    def _new_episode(self, ix: int, video_dir: Path | None) -> Episode:
        ec = self.eval_cfg
        seed = ec.start_seed + ix
        env = self.task.make_env(ec.video_size)
        obs, info = self.task.reset(env, seed)
        record = EpisodeRecord(episode_ix=ix, seed=seed, final_coverage=self.task.score(0.0, info).progress)
        return Episode(
            ix=ix,
            seed=seed,
            env=env,
            gen=episode_generator(ec.noise_seed, seed),
            history=deque([self.task.observation(obs, info)] * self.To, maxlen=self.To),
            obs=obs,
            info=info,
            record=record,
            frames=[env.render()] if video_dir is not None and ix < ec.max_videos else None,
        )

    def _finish_episode(
        self, e: Episode, video_dir: Path | None, prefix: str, on_steps: Callable[[int], None] | None
    ) -> dict[str, Any]:
        if e.frames is not None and video_dir is not None:
            path = self.task.write_video(Path(video_dir) / f"{prefix}{e.ix}.mp4", e.frames)
            e.record.video_path = str(path)
        e.frames = None
        e.env.close()
        if on_steps is not None:
            on_steps(max(0, self.eval_cfg.max_steps - e.record.n_steps))
        return e.record.as_dict()


def aggregate_episodes(records: list[dict[str, Any]], wall_s: float, cpu_s: float) -> dict[str, Any]:
    """`evaluation.aggregate` plus the controller's totals."""
    agg = aggregate(records, wall_s)
    for key in TOTAL_COUNTERS:
        agg[f"total_{key}"] = int(sum(r[key] for r in records))
    agg["cpu_s"] = cpu_s  # all threads; with 1 thread ~ wall time when idle
    agg["n_stopped"] = int(sum(r["stopped"] for r in records))
    agg["mean_ticks_lost"] = float(np.mean([r["ticks_lost"] for r in records]))
    agg["mean_plans"] = float(np.mean([r["n_chunks"] for r in records]))
    return agg


def _lockstep(control: ControlConfig) -> bool:
    """Whether episodes run in lockstep batches of ``eval.batch_size``: in ``frozen`` mode, and in
    ``realtime_sim`` with a fixed latency model (the simulated timeline then does not depend on compute
    time, so the results are those of one episode at a time up to float rounding)."""
    fixed = LatencyModel.parse(control.latency_model).kind == "fixed"
    return control.mode == "frozen" or (control.mode == "realtime_sim" and fixed)


def check_policy_settings(
    policy: DiffusionPolicy, control: ControlConfig, samplers: Sequence[SamplerConfig]
) -> None:
    """Fail at start, with a clear message, on settings this policy cannot run.

    Raises:
        ConfigError: ``n_action_steps`` larger than the policy's horizon allows, or a sampler with more
            inference steps than the policy was trained with.
    """
    cfg = policy.config
    ta = control.n_action_steps or cfg.n_action_steps
    cfg.check_action_steps(ta, "control.n_action_steps")
    for s in samplers:
        cfg.check_sampler(s)
