"""The closed-loop controller: runs episodes of one policy under one `ControlConfig` (no hydra).

Semantics of the control modes, the output guard and the noise per episode are in `rollout`'s module
docs and ``docs/control_modes.md``; `rollout.run_rollouts` is the public entry point.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from parapolicy.envs import PushTEnv, reference_initial_state
from parapolicy.envs.video import check_video_output, write_mp4
from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.control.evaluation import EvalConfig, aggregate, episode_generator
from parapolicy.policy.control.latency import SOURCE_CODE, ChunkLog, SectionTimer, StepLog, latency_summary
from parapolicy.policy.control.settings import ControlConfig, LatencyModel
from parapolicy.policy.diffusion.sequential import draw_noise
from parapolicy.policy.diffusion.warm_start import common_random_numbers, warm_start_guess
from parapolicy.policy.model.policy import OBS_KEY, DiffusionPolicy, ObservationError

log = logging.getLogger(__name__)

FAULT_NAN, FAULT_ERROR, FAULT_OBS = 1, 2, 3
WARMUP_SEED = 0x5EED


@dataclass
class RolloutResult:
    """Everything one rollout run produced.

    Attributes:
        mode: the control mode.
        per_episode: one record per episode (``eval_info.json`` schema plus controller counters).
        aggregated: `evaluation.aggregate` metrics plus controller totals.
        steps: one row per control step (warm-up excluded).
        chunks: one row per plan.
        sections: wall time per section (observation, denoiser, sampler, controller, env_step).
        warmup_ms: latencies of the warm-up plans (excluded from every statistic).
        latency: the summary block (`latency.latency_summary`).
        sampler: the sampler that ran (after an automatic budget choice).
        budget: the automatic budget choice's report, or None.
    """

    mode: str
    per_episode: list[dict[str, Any]]
    aggregated: dict[str, Any]
    steps: StepLog
    chunks: ChunkLog
    sections: SectionTimer
    warmup_ms: list[float]
    latency: dict[str, Any]
    sampler: SamplerConfig
    budget: dict[str, Any] | None = None

    def eval_info(self) -> dict[str, Any]:
        """The lerobot-compatible ``eval_info.json`` body (``per_episode``, ``aggregated``, ``latency``)."""
        return {
            "per_episode": self.per_episode,
            "aggregated": self.aggregated,
            "latency": self.latency,
            "mode": self.mode,
            "sampler": dataclasses.asdict(self.sampler),
            "budget_choice": self.budget,
        }


# --------------------------------------------------------------------------------------------------
# internal state
@dataclass
class _Plan:
    """One plan for one episode: its actions for ticks ``request .. request + len(actions) - 1``."""

    chunk: int
    request: int
    actions: np.ndarray | None  # (n_rows, Da); None on a fault
    fault: int
    latency_ms: float
    compute_ms: float
    denoiser_ms: float
    observation_ms: float
    t_obs_ns: int
    t_ready_ns: int
    batch_rows: int
    model_calls: int
    model_evals: float
    sequential_passes: int
    picard_iters: int
    converged: int
    final_residual: float
    warm_started: bool
    rows_per_call: tuple[int, ...] = ()
    arrival: int = 0
    next_row: int = 0
    used: bool = False


@dataclass
class _Previous:
    """What the next plan of an episode reuses (warm start / common random numbers)."""

    request: int
    sample: Tensor  # (H, Da) the converged sample, normalised
    x_T: Tensor  # (H, Da)
    noise: Tensor  # (K, H, Da)


@dataclass
class _Episode:
    ix: int
    seed: int
    env: Any
    gen: torch.Generator
    history: deque
    agent: np.ndarray
    record: dict[str, Any]
    frames: list[np.ndarray] | None
    tick: int = 0
    plan: _Plan | None = None
    pending: _Plan | None = None
    next_request: int = 0
    n_chunks: int = 0
    previous: _Previous | None = None
    last_target: np.ndarray | None = None
    fault_now: int = 0
    consecutive: int = 0
    done: bool = False


class _DenoiserProbe:
    """Times every denoiser call of the policy while installed (restores the original on exit)."""

    def __init__(self, policy: DiffusionPolicy) -> None:
        self.policy = policy
        self.ns = 0
        self.calls = 0
        self._cuda = policy.device.type == "cuda"
        self._had_own = "denoise" in policy.__dict__
        self._own = policy.__dict__.get("denoise")
        self._inner = policy.denoise

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        start = time.perf_counter_ns()
        out = self._inner(x, t, cond)
        if self._cuda:
            torch.cuda.synchronize(out.device)
        self.ns += time.perf_counter_ns() - start
        self.calls += 1
        return out

    def __enter__(self) -> _DenoiserProbe:
        self.policy.__dict__["denoise"] = self
        return self

    def __exit__(self, *exc: object) -> None:
        if self._had_own:
            self.policy.__dict__["denoise"] = self._own
        else:
            self.policy.__dict__.pop("denoise", None)


def _fallback_action(e: _Episode) -> np.ndarray:
    """The PushT safe action: target the pusher's current position (it stops where it is)."""
    return np.asarray(e.agent, dtype=np.float64).copy()


# --------------------------------------------------------------------------------------------------
# the controller
class Controller:
    """Runs episodes of one policy under one `ControlConfig`; see the module docstring.

    Args:
        policy: the policy (its current sampler is used).
        control: the controller settings.
        eval_cfg: episodes, seeds, batching (``frozen`` only), videos, noise seed.
        env_factory: builds one environment (default: a keypoints `PushTEnv` rendering at
            ``eval_cfg.video_size``); must return PushT-compatible observations and ``info``.
    """

    def __init__(
        self,
        policy: DiffusionPolicy,
        control: ControlConfig,
        eval_cfg: EvalConfig,
        env_factory: Callable[[], Any] | None = None,
    ) -> None:
        check_policy_settings(policy, control, [policy.sampler])
        cfg = policy.config
        self.policy, self.control, self.eval_cfg = policy, control, eval_cfg
        self.To = cfg.n_obs_steps
        self.Ta = control.n_action_steps or cfg.n_action_steps
        self.n_rows = cfg.max_action_steps if control.use_plan_tail else self.Ta
        self.period_ms = control.period_ms
        self.period_ns = int(round(control.period_ms * 1e6))
        self.budget_ms = control.effective_budget_ms
        self.model = LatencyModel.parse(control.latency_model)
        self.env_factory = env_factory or (
            lambda: PushTEnv(
                obs_type="keypoints",
                visualization_width=eval_cfg.video_size,
                visualization_height=eval_cfg.video_size,
            )
        )
        self.steps = StepLog()
        self.chunks = ChunkLog()
        self.sections = SectionTimer()
        self._error_logged = False
        self._on_steps: Callable[[int], None] | None = None

    # ---------------------------------------------------------------------------------------------
    # public
    def run(
        self,
        video_dir: Path | None = None,
        video_prefix: str = "eval_episode_",
        on_steps: Callable[[int], None] | None = None,
        on_episode: Callable[[dict[str, Any]], None] | None = None,
    ) -> RolloutResult:
        """Run ``eval_cfg.n_episodes`` episodes and return their records, logs and summaries.

        Args:
            video_dir: where ``<video_prefix><i>.mp4`` of the first ``eval_cfg.max_videos`` episodes go.
            video_prefix: file name prefix of the videos.
            on_steps: called with the number of control steps done since the last call (progress);
                an episode that ends early reports its unused steps too, so the total is
                ``n_episodes * max_steps``.
            on_episode: called with each finished episode's record.
        """
        ec, control = self.eval_cfg, self.control
        if video_dir is not None and ec.max_videos:
            check_video_output(video_dir)  # fail before the rollouts, not after
        self._on_steps = on_steps
        self.steps, self.chunks, self.sections = StepLog(), ChunkLog(), SectionTimer()
        self._error_logged = False
        start, cpu_start = time.perf_counter(), time.process_time()
        seeds = [ec.start_seed + i for i in range(ec.n_episodes)]
        batch = ec.batch_size if control.mode == "frozen" else 1
        pool = ThreadPoolExecutor(1, thread_name_prefix="planner") if control.mode == "wallclock" else None
        records: list[dict[str, Any]] = []
        with _DenoiserProbe(self.policy) as probe:
            self._probe = probe
            try:
                warmup_ms = self._warmup(seeds[0], min(batch, ec.n_episodes), pool)
                for first in range(0, ec.n_episodes, batch):
                    idx = list(range(first, min(first + batch, ec.n_episodes)))
                    episodes = [self._new_episode(i, seeds[i], video_dir) for i in idx]
                    if control.mode == "wallclock":
                        self._run_wallclock(episodes[0], pool)
                    else:
                        self._run_ticks(episodes)
                    for e in episodes:
                        rec = self._finish_episode(e, video_dir, video_prefix)
                        records.append(rec)
                        if on_episode is not None:
                            on_episode(rec)
            finally:
                if pool is not None:
                    pool.shutdown(wait=True)
        records.sort(key=lambda r: r["episode_ix"])
        agg = aggregate(records, time.perf_counter() - start)
        for key in (
            "deadline_misses",
            "held_steps",
            "fallback_steps",
            "ticks_lost",
            "tail_steps",
            "nan_chunks",
            "denoiser_errors",
            "observation_errors",
            "n_chunks",
        ):
            agg[f"total_{key}"] = int(sum(r[key] for r in records))
        agg["cpu_s"] = time.process_time() - cpu_start  # all threads; with 1 thread ~ wall time when idle
        agg["n_stopped"] = int(sum(r["stopped"] for r in records))
        agg["mean_ticks_lost"] = float(np.mean([r["ticks_lost"] for r in records]))
        lat = latency_summary(self.steps, self.chunks, self.budget_ms, warmup_ms, self.sections)
        lat.update(mode=control.mode, hz=control.hz, latency_model=control.latency_model, batch_size=batch)
        return RolloutResult(
            mode=control.mode,
            per_episode=records,
            aggregated=agg,
            steps=self.steps,
            chunks=self.chunks,
            sections=self.sections,
            warmup_ms=warmup_ms,
            latency=lat,
            sampler=self.policy.sampler,
        )

    # ---------------------------------------------------------------------------------------------
    # episodes
    def _new_episode(self, ix: int, seed: int, video_dir: Path | None) -> _Episode:
        env = self.env_factory()
        obs, info = env.reset(options={"reset_to_state": reference_initial_state(seed)})
        record_video = video_dir is not None and ix < self.eval_cfg.max_videos
        rec: dict[str, Any] = {
            "episode_ix": ix,
            "seed": seed,
            "max_reward": 0.0,
            "sum_reward": 0.0,
            "success": False,
            "n_steps": 0,
            "final_coverage": float(info["coverage"]),
            "deadline_misses": 0,
            "held_steps": 0,
            "fallback_steps": 0,
            "fresh_steps": 0,
            "queued_steps": 0,
            "tail_steps": 0,
            "ticks_lost": 0,
            "n_chunks": 0,
            "nan_chunks": 0,
            "denoiser_errors": 0,
            "observation_errors": 0,
            "pacing_overruns": 0,
            "stopped": False,
            "stop_reason": None,
            "stop_step": None,
            "video_path": None,
        }
        return _Episode(
            ix=ix,
            seed=seed,
            env=env,
            gen=episode_generator(self.eval_cfg.noise_seed, seed),
            history=deque([np.asarray(obs)] * self.To, maxlen=self.To),
            agent=np.asarray(info["pos_agent"], dtype=np.float64),
            record=rec,
            frames=[env.render()] if record_video else None,
        )

    def _finish_episode(self, e: _Episode, video_dir: Path | None, prefix: str) -> dict[str, Any]:
        if e.frames is not None and video_dir is not None:
            path = write_mp4(
                Path(video_dir) / f"{prefix}{e.ix}.mp4", e.frames, fps=PushTEnv.metadata["render_fps"]
            )
            e.record["video_path"] = str(path)
        e.frames = None
        e.env.close()
        if self._on_steps is not None:
            self._on_steps(max(0, self.eval_cfg.max_steps - e.record["n_steps"]))
        return e.record

    # ---------------------------------------------------------------------------------------------
    # planning
    def _warmup(self, seed: int, rows: int, pool: ThreadPoolExecutor | None) -> list[float]:
        """Time ``warmup_plans`` plans on the first initial observation (fresh, throwaway noise)."""
        if self.control.warmup_plans == 0:
            return []
        env = self.env_factory()
        obs, _ = env.reset(options={"reset_to_state": reference_initial_state(seed)})
        env.close()
        history = torch.as_tensor(np.stack([obs] * self.To), dtype=torch.float32)  # (To, Do)
        history = history.unsqueeze(0).expand(rows, -1, -1).contiguous()  # (B, To, Do)

        def one(k: int) -> float:
            gens = [torch.Generator().manual_seed(WARMUP_SEED + k * 1000 + b) for b in range(rows)]
            t0 = time.perf_counter_ns()
            pred = self.policy.predict_action_chunk({OBS_KEY: history}, generator=gens)
            pred.plan.cpu()
            return (time.perf_counter_ns() - t0) / 1e6

        out = []
        try:
            for k in range(self.control.warmup_plans):
                out.append(pool.submit(one, k).result() if pool is not None else one(k))
        except Exception as exc:  # a policy that fails here fails in the episodes too, where it is guarded
            self._log_fault_once("warm-up plan raised", exc)
        self._probe.ns, self._probe.calls = 0, 0
        return out

    def _noise_and_guess(
        self, eps: list[_Episode], ticks: list[int]
    ) -> tuple[Tensor, Tensor, Tensor | None, list[bool]]:
        """Per-episode noise (fresh draws, or shifted previous noise with CRN) and warm-start guesses."""
        policy, s = self.policy, self.policy.sampler
        cfg = policy.config
        H, Da = cfg.horizon, cfg.action_dim
        picard_ws = s.is_parallel and s.warm_start
        xs, ns, guesses, warm = [], [], [], []
        for e, t in zip(eps, ticks, strict=True):
            prev = e.previous if picard_ws else None
            shift = t - prev.request if prev is not None else 0
            if prev is not None and not 0 < shift <= H:
                prev = None
            if prev is not None and s.common_random_numbers:
                x_T, noise = common_random_numbers(prev.x_T[None], prev.noise[:, None], shift, e.gen)
            else:
                x_T, noise = draw_noise(policy.table, (1, H, Da), [e.gen], device=policy.device)
            xs.append(x_T)  # (1, H, Da)
            ns.append(noise)  # (K, 1, H, Da)
            warm.append(prev is not None)
            guesses.append(
                warm_start_guess(prev.sample[None], shift) if prev is not None else torch.zeros_like(x_T)
            )  # (1, H, Da); 0 is the sampler's cold guess under the x0_rollout refill
        x_T = torch.cat(xs, dim=0)  # (B, H, Da)
        noise = torch.cat(ns, dim=1)  # (K, B, H, Da)
        x0_guess = torch.cat(guesses, dim=0) if any(warm) else None  # (B, H, Da)
        return x_T, noise, x0_guess, warm

    def _plan(self, eps: list[_Episode], ticks: list[int], histories: list[np.ndarray]) -> list[_Plan]:
        """Plan for ``eps`` in one batched call; faults become fault plans (never raised)."""
        t_start = time.perf_counter_ns()
        policy, s = self.policy, self.policy.sampler
        start_row = policy.config.action_start
        plans: list[_Plan | None] = [None] * len(eps)
        ok_idx, ok_hist = [], []
        for b, h in enumerate(histories):
            try:
                ok_hist.append(policy.validate_observation({OBS_KEY: h}, history=True))
                ok_idx.append(b)
            except ObservationError as exc:
                self._log_fault_once("observation rejected", exc)
                plans[b] = self._fault_plan(eps[b], ticks[b], FAULT_OBS, t_start)
        if not ok_idx:
            return plans  # type: ignore[return-value]
        t_obs_done = time.perf_counter_ns()
        sub = [eps[b] for b in ok_idx]
        sub_ticks = [ticks[b] for b in ok_idx]
        B = len(sub)
        self._probe.ns, self._probe.calls = 0, 0
        try:
            x_T, noise, x0_guess, warm = self._noise_and_guess(sub, sub_ticks)
            history = torch.cat(ok_hist, dim=0)  # (B, To, Do)
            pred = policy.predict_action_chunk({OBS_KEY: history}, noise=(x_T, noise), x0_guess=x0_guess)
            rows = pred.plan[:, start_row : start_row + self.n_rows].detach().cpu().numpy()  # (B, n, Da)
        except Exception as exc:  # the guard: a raising denoiser must not end the rollout
            self._log_fault_once("planning raised", exc)
            for b in ok_idx:
                plans[b] = self._fault_plan(eps[b], ticks[b], FAULT_ERROR, t_start)
            return plans  # type: ignore[return-value]
        t_end = time.perf_counter_ns()
        res = pred.result
        compute_ms = (t_end - t_start) / 1e6
        den_ms = self._probe.ns / 1e6
        obs_ms = (t_obs_done - t_start) / 1e6
        self.sections.add("observation", t_obs_done - t_start)
        self.sections.add("denoiser", self._probe.ns)
        self.sections.add("sampler", max(0, t_end - t_obs_done - self._probe.ns))
        finite = np.isfinite(rows).all(axis=(1, 2))  # (B,)
        picard = s.is_parallel
        for j, b in enumerate(ok_idx):
            e = eps[b]
            if not finite[j]:
                self._log_fault_once("non-finite plan", None)
                plans[b] = self._fault_plan(e, ticks[b], FAULT_NAN, t_start, compute_ms=compute_ms)
                continue
            if picard and s.warm_start:
                e.previous = _Previous(
                    request=ticks[b],
                    sample=res.sample[j].clone(),
                    x_T=pred.x_T[j].clone(),
                    noise=pred.noise[:, j].clone(),
                )
            latency = self.model.latency_ms(compute_ms, res.rows_per_call)
            plans[b] = _Plan(
                chunk=e.n_chunks,
                request=ticks[b],
                actions=rows[j].astype(np.float64),
                fault=0,
                latency_ms=latency,
                compute_ms=compute_ms,
                denoiser_ms=den_ms,
                observation_ms=obs_ms,
                t_obs_ns=t_start,
                t_ready_ns=t_end,
                batch_rows=B,
                model_calls=res.model_calls,
                model_evals=res.rows_evaluated / B,
                sequential_passes=res.sequential_passes,
                picard_iters=res.iterations if picard else 0,
                converged=int(bool(res.converged[j])),
                final_residual=float(res.final_residual[j]),
                warm_started=warm[j],
                rows_per_call=tuple(res.rows_per_call),
            )
            e.n_chunks += 1
        return plans  # type: ignore[return-value]

    def _fault_plan(
        self, e: _Episode, tick: int, fault: int, t_start: int, compute_ms: float | None = None
    ) -> _Plan:
        t_end = time.perf_counter_ns()
        ms = compute_ms if compute_ms is not None else (t_end - t_start) / 1e6
        e.previous = None
        plan = _Plan(
            chunk=e.n_chunks,
            request=tick,
            actions=None,
            fault=fault,
            latency_ms=self.model.ms if self.model.kind == "fixed" else ms,  # no calls to model
            compute_ms=ms,
            denoiser_ms=0.0,
            observation_ms=0.0,
            t_obs_ns=t_start,
            t_ready_ns=t_end,
            batch_rows=1,
            model_calls=0,
            model_evals=0.0,
            sequential_passes=0,
            picard_iters=0,
            converged=0,
            final_residual=float("nan"),
            warm_started=False,
        )
        e.n_chunks += 1
        return plan

    def _log_fault_once(self, what: str, exc: BaseException | None) -> None:
        if not self._error_logged:
            self._error_logged = True
            log.warning(
                "policy fault (%s): using the fallback action; further faults are only counted",
                what,
                exc_info=exc,
            )

    def _ticks_late(self, plan: _Plan, first_plan: bool) -> int:
        if self.control.mode == "frozen" or (first_plan and self.control.wait_first_plan):
            return 0
        return max(0, math.ceil(plan.latency_ms / self.period_ms - 1e-9))

    def _record_chunk(self, e: _Episode, p: _Plan, install_tick: int) -> None:
        self.chunks.append(
            episode=e.ix,
            chunk=p.chunk,
            request_step=p.request,
            ready_step=install_tick,
            latency_ms=p.latency_ms,
            compute_ms=p.compute_ms,
            denoiser_ms=p.denoiser_ms,
            observation_ms=p.observation_ms,
            budget_ms=self.budget_ms,
            over_budget=p.latency_ms > self.budget_ms,
            ticks_late=install_tick - p.request,
            batch_rows=p.batch_rows,
            model_calls=p.model_calls,
            model_evals=p.model_evals,
            sequential_passes=p.sequential_passes,
            picard_iters=p.picard_iters,
            converged=p.converged,
            final_residual=p.final_residual,
            warm_started=p.warm_started,
            fault=p.fault,
        )

    def _install(self, e: _Episode, p: _Plan, tick: int) -> None:
        """Make ``p`` the episode's current plan at ``tick`` (stale rows skipped) or register its fault."""
        self._record_chunk(e, p, tick)
        rec = e.record
        rec["n_chunks"] += 1
        if p.fault:
            key = {FAULT_NAN: "nan_chunks", FAULT_ERROR: "denoiser_errors", FAULT_OBS: "observation_errors"}
            rec[key[p.fault]] += 1
            e.plan = None
            e.fault_now = p.fault
            e.next_request = tick + 1  # replan from the next observation
            return
        skip = tick - p.request
        if skip >= len(p.actions):
            skip = len(p.actions) - 1  # every action is in the past: execute the last one now
        rec["ticks_lost"] += skip
        p.next_row = skip
        p.arrival = tick
        e.plan = p

    # ---------------------------------------------------------------------------------------------
    # one control step
    def _act(self, e: _Episode, tick_ns: int, sim: bool) -> None:
        """Choose the action of ``e``'s current tick, step the env, record the step."""
        t0 = time.perf_counter_ns()
        rec, control = e.record, self.control
        plan_used: _Plan | None = None
        fresh = False
        row = -1
        if e.fault_now:
            e.fault_now = 0
            action, source, missed = _fallback_action(e), "fallback", True
        elif e.plan is not None and e.plan.next_row < len(e.plan.actions):
            plan_used = e.plan
            row = plan_used.next_row
            action = plan_used.actions[row]
            plan_used.next_row += 1
            fresh = not plan_used.used
            plan_used.used = True
            source = "fresh" if fresh else "queued"
            missed = fresh and plan_used.latency_ms > self.budget_ms
        else:  # starved: no planned action for this tick
            missed = True
            if control.on_miss == "stop":
                rec["deadline_misses"] += 1
                self._stop(e, "deadline_miss")
                return
            if control.on_miss == "hold" and e.last_target is not None:
                action, source = e.last_target, "held"
            elif control.on_miss == "hold":
                action, source = _fallback_action(e), "held"
            else:
                action, source = _fallback_action(e), "fallback"
        if not np.isfinite(action).all():  # belt and braces: nothing non-finite reaches the env
            action, source, missed = _fallback_action(e), "fallback", True
        t_ready = time.perf_counter_ns()
        self.sections.add("controller", t_ready - t0)

        t_env = time.perf_counter_ns()
        obs, reward, terminated, _, info = e.env.step(action)
        env_ns = time.perf_counter_ns() - t_env
        self.sections.add("env_step", env_ns)
        t_hist = time.perf_counter_ns()
        e.history.append(np.asarray(obs))
        e.agent = np.asarray(info["pos_agent"], dtype=np.float64)
        self.sections.add("observation", time.perf_counter_ns() - t_hist)
        e.last_target = np.asarray(action, dtype=np.float64)

        # the step record
        if fresh and plan_used is not None:
            p = plan_used
            if sim:
                t_obs = p.request * self.period_ns
                t_rdy = t_obs + int(round(p.latency_ms * 1e6))
            else:
                t_obs, t_rdy = p.t_obs_ns, p.t_ready_ns
            stats = (p.model_evals, p.sequential_passes, p.picard_iters, p.converged, p.final_residual)
            ticks_late = e.tick - p.request
            chunk = p.chunk
        else:
            t_obs = tick_ns if sim else t0
            t_rdy = t_obs + (t_ready - t0)
            stats = (0.0, 0, 0, -1, float("nan"))
            ticks_late = 0
            chunk = plan_used.chunk if plan_used is not None else -1
        self.steps.append(
            episode=e.ix,
            step=e.tick,
            t_obs_ns=t_obs,
            t_ready_ns=t_rdy,
            deadline_ns=t_obs + int(round(self.budget_ms * 1e6)),
            latency_ms=(t_rdy - t_obs) / 1e6,
            budget_ms=self.budget_ms,
            missed=missed,
            action_source=SOURCE_CODE[source],
            chunk=chunk,
            model_evals=stats[0],
            sequential_passes=stats[1],
            picard_iters=stats[2],
            converged=stats[3],
            final_residual=stats[4],
            ticks_late=ticks_late,
            env_ms=env_ns / 1e6,
            batch_rows=plan_used.batch_rows if plan_used is not None else 0,
        )
        rec[f"{source}_steps"] += 1
        if plan_used is not None and row >= self.Ta:
            rec["tail_steps"] += 1
        if missed:
            rec["deadline_misses"] += 1
            e.consecutive += 1
        else:
            e.consecutive = 0

        rec["n_steps"] += 1
        rec["max_reward"] = max(rec["max_reward"], float(reward))
        rec["sum_reward"] += float(reward)
        rec["final_coverage"] = float(info["coverage"])
        rec["success"] = rec["success"] or bool(info["is_success"])
        if e.frames is not None:
            e.frames.append(e.env.render())
        e.tick += 1
        if self._on_steps is not None:
            self._on_steps(1)
        if terminated or rec["n_steps"] >= self.eval_cfg.max_steps:
            e.done = True
        elif control.max_consecutive_misses is not None and e.consecutive >= control.max_consecutive_misses:
            self._stop(e, "max_consecutive_misses")

    def _stop(self, e: _Episode, reason: str) -> None:
        e.done = True
        e.record["stopped"] = True
        e.record["stop_reason"] = reason
        e.record["stop_step"] = e.tick

    # ---------------------------------------------------------------------------------------------
    # frozen and realtime_sim: a tick loop over a lockstep batch of episodes
    def _run_ticks(self, episodes: list[_Episode]) -> None:
        sim = self.control.mode == "realtime_sim"
        active = list(episodes)
        while active:
            for e in active:  # plans whose (simulated) latency has elapsed
                if e.pending is not None and e.pending.arrival <= e.tick:
                    plan, e.pending = e.pending, None
                    self._install(e, plan, e.tick)
            need = [e for e in active if e.pending is None and e.tick >= e.next_request]
            if need:
                ticks = [e.tick for e in need]
                hist_ns = time.perf_counter_ns()
                histories = [np.stack(e.history) for e in need]  # (To, Do) each
                self.sections.add("observation", time.perf_counter_ns() - hist_ns)
                for e, plan in zip(need, self._plan(need, ticks, histories), strict=True):
                    first = plan.chunk == 0
                    plan.arrival = e.tick + self._ticks_late(plan, first)
                    e.next_request = e.tick + self.Ta
                    if plan.arrival <= e.tick:
                        self._install(e, plan, e.tick)
                    else:
                        e.pending = plan
            for e in active:
                self._act(e, e.tick * self.period_ns, sim)
            active = [e for e in active if not e.done]

    # ---------------------------------------------------------------------------------------------
    # wallclock: paced loop, planning on a background thread
    def _submit(self, pool: ThreadPoolExecutor, e: _Episode) -> Future:
        tick = e.tick
        t_req = time.perf_counter_ns()
        history = np.stack(e.history)  # snapshot: the main thread keeps appending

        def job() -> _Plan:
            plan = self._plan([e], [tick], [history])[0]
            plan.t_obs_ns = t_req  # latency counts from the request, queueing included
            if self.model.kind == "measured":
                plan.latency_ms = (plan.t_ready_ns - t_req) / 1e6
            return plan

        e.next_request = tick + self.Ta
        return pool.submit(job)

    def _run_wallclock(self, e: _Episode, pool: ThreadPoolExecutor) -> None:
        future: Future | None = None
        if self.control.wait_first_plan:
            self._install(e, self._submit(pool, e).result(), 0)
        t_zero = time.perf_counter_ns()
        try:
            while not e.done:
                tick_ns = t_zero + e.tick * self.period_ns
                now = time.perf_counter_ns()
                if now < tick_ns:
                    time.sleep((tick_ns - now) / 1e9)
                elif now - tick_ns > self.period_ns:
                    e.record["pacing_overruns"] += 1  # the loop itself fell a whole tick behind
                if future is not None and future.done():
                    self._install(e, future.result(), e.tick)
                    future = None
                if future is None and e.tick >= e.next_request:
                    future = self._submit(pool, e)
                self._act(e, tick_ns, sim=False)
        finally:
            if future is not None:
                future.result()  # let the in-flight plan finish before the next episode starts


def check_policy_settings(
    policy: DiffusionPolicy, control: ControlConfig, samplers: Sequence[SamplerConfig]
) -> None:
    """Fail at start, with a clear message, on settings this policy cannot run.

    Raises:
        ValueError: ``n_action_steps`` larger than the policy's horizon allows, or a sampler with more
            inference steps than the policy was trained with.
    """
    cfg = policy.config
    ta = control.n_action_steps or cfg.n_action_steps
    cfg.check_action_steps(ta, "control.n_action_steps")
    for s in samplers:
        cfg.check_sampler(s)
