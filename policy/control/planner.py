"""Planning and latency: request plans from the policy for a batch of episodes, time them, guard them.

`Planner.plan` validates each episode's observation history (low-dim or images: one path,
`image_observation.history_observation` / `batch_observations`), draws its noise and warm start (the one
warm-start function, `diffusion.warm_start.next_chunk_inputs`), runs one batched
`predict_action_chunk`, and returns one `records.Plan` per episode with its latency under the
`settings.LatencyModel`. Faults (rejected observation, raising sampler, non-finite plan) become fault
plans, never exceptions. Denoiser time comes from the `runtime.timing.TimedDenoiser` the controller
installs for the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from parapolicy.policy.control.episode import Episode
from parapolicy.policy.control.faults import Fault
from parapolicy.policy.control.latency import SectionTimer
from parapolicy.policy.control.records import Plan, PlanStats
from parapolicy.policy.control.settings import ControlConfig, LatencyModel
from parapolicy.policy.control.stitching import Expectation
from parapolicy.policy.diffusion.inpaint import Inpaint
from parapolicy.policy.diffusion.sequential import draw_noise
from parapolicy.policy.diffusion.warm_start import PreviousChunk, next_chunk_inputs
from parapolicy.policy.model.image_observation import batch_observations, history_observation
from parapolicy.policy.model.policy import ChunkPrediction, DiffusionPolicy, ObservationError
from parapolicy.policy.runtime.timing import TimedDenoiser

log = logging.getLogger(__name__)

WARMUP_SEED = 0x5EED


class Planner:
    """Makes the plans of a rollout; see the module docstring.

    Args:
        policy: the policy (its current sampler is used).
        control: the controller settings (latency model, budget).
        n_rows: plan rows kept per plan (Ta, or up to H - To + 1 with the plan tail).
        sections: the run's section timer (observation, denoiser, sampler).
    """

    def __init__(
        self, policy: DiffusionPolicy, control: ControlConfig, n_rows: int, sections: SectionTimer
    ) -> None:
        self.policy = policy
        self.n_rows = n_rows
        self.model = LatencyModel.parse(control.latency_model)
        self.sections = sections
        self.timer: TimedDenoiser | None = None  # installed by the controller for the run
        self.error_logged = False

    def _denoiser_ns(self) -> int:
        return int(self.timer.seconds * 1e9) if self.timer is not None else 0

    def _reset_timer(self) -> None:
        if self.timer is not None:
            self.timer.reset()

    # ---------------------------------------------------------------------------------------------
    def warmup(
        self, observation: Any, rows: int, n_plans: int, pool: ThreadPoolExecutor | None
    ) -> list[float]:
        """Time ``n_plans`` plans of ``rows`` copies of one task observation (To-repeated, throwaway
        noise)."""
        To = self.policy.config.n_obs_steps

        def one(k: int) -> float:
            gens = [torch.Generator().manual_seed(WARMUP_SEED + k * 1000 + b) for b in range(rows)]
            t0 = time.perf_counter_ns()
            pred = self.policy.predict_action_chunk(batch, generator=gens)
            pred.plan.cpu()
            return (time.perf_counter_ns() - t0) / 1e6

        out = []
        try:
            history = self.policy.validate_observation(history_observation([observation] * To), history=True)
            batch = batch_observations([history] * rows)  # (B, To, ...) per key
            for k in range(n_plans):
                out.append(pool.submit(one, k).result() if pool is not None else one(k))
        except Exception as exc:  # a policy that fails here fails in the episodes too, where it is guarded
            self.log_fault_once("warm-up plan raised", exc)
        self._reset_timer()
        return out

    def plan(
        self,
        eps: Sequence[Episode],
        ticks: Sequence[int],
        histories: Sequence[Mapping[str, np.ndarray]],
        expect: Sequence[Expectation] | None = None,
    ) -> list[Plan]:
        """Plan for ``eps`` in one batched call; faults become fault plans.

        ``ticks``: each plan's first tick (the request's tick plus its expectation's ``start_offset``).

        ``histories``: one To-step policy observation per episode (`image_observation.history_observation`:
        ``{"obs": (To, Do)}``, or ``{"pixels": (To, S, S, 3), "agent_pos": (To, Do)}`` for images).

        ``expect`` (one per episode, see `stitching`) gives each plan's expected delay and the rows it
        must continue (``stitch=inpaint``); None: no expectation (the world waits).
        """
        t_start = time.perf_counter_ns()
        expect = list(expect) if expect is not None else [Expectation()] * len(eps)
        plans: list[Plan | None] = [None] * len(eps)
        ok_idx, ok_hist = [], []
        for b, h in enumerate(histories):
            try:
                ok_hist.append(self.policy.validate_observation(h, history=True))  # (1, To, ...) per key
                ok_idx.append(b)
            except ObservationError as exc:
                self.log_fault_once("observation rejected", exc)
                plans[b] = self.fault_plan(eps[b], ticks[b], Fault.OBSERVATION, t_start)
        if ok_idx:
            sub = [eps[b] for b in ok_idx]
            sub_expect = [expect[b] for b in ok_idx]
            made = self._plan_valid(
                sub, [ticks[b] for b in ok_idx], batch_observations(ok_hist), t_start, sub_expect
            )
            for b, p in zip(ok_idx, made, strict=True):
                plans[b] = p
        done = cast(list[Plan], plans)
        for p, x in zip(done, expect, strict=True):
            p.lead = x.start_offset
            p.expected_delay, p.expected_latency_ms = x.ticks, x.latency_ms
            p.inpainted_rows = x.inpainted_rows
        return done

    def _plan_valid(
        self,
        eps: list[Episode],
        ticks: list[int],
        history: dict[str, Tensor],
        t_start: int,
        expect: list[Expectation],
    ) -> list[Plan]:
        """One batched sample for episodes whose observations passed; history (B, To, ...) per key."""
        t_obs_done = time.perf_counter_ns()
        start_row = self.policy.config.action_start
        self._reset_timer()
        try:
            x_T, noise, x0_guess, warm = self._noise_and_guess(eps, ticks)
            pred = self.policy.predict_action_chunk(
                history, noise=(x_T, noise), x0_guess=x0_guess, inpaint=self._inpaint(expect)
            )
            rows = pred.plan[:, start_row : start_row + self.n_rows].detach().cpu().numpy()  # (B, n, Da)
        except Exception as exc:  # the guard: a raising denoiser must not end the rollout
            self.log_fault_once("planning raised", exc)
            return [self.fault_plan(e, t, Fault.ERROR, t_start) for e, t in zip(eps, ticks, strict=True)]
        t_end = time.perf_counter_ns()
        den_ns = self._denoiser_ns()
        self.sections.add("observation", t_obs_done - t_start)
        self.sections.add("denoiser", den_ns)
        self.sections.add("sampler", max(0, t_end - t_obs_done - den_ns))
        times = (t_start, t_obs_done, t_end, den_ns)
        plans = [
            self._episode_plan(e, t, j, pred, rows, warm[j], times)
            for j, (e, t) in enumerate(zip(eps, ticks, strict=True))
        ]
        return plans

    def _inpaint(self, expect: Sequence[Expectation]) -> Inpaint | None:
        """The known rows of a batch of plans in normalised units (`diffusion.inpaint`), or None if none."""
        if all(x.known is None for x in expect):
            return None
        policy = self.policy
        H, Da = policy.config.horizon, policy.config.action_dim
        target = torch.zeros((len(expect), H, Da))  # (B, H, Da) normalised
        weight = torch.zeros((len(expect), H, 1))  # (B, H, 1)
        for j, x in enumerate(expect):
            if x.known is not None:
                target[j] = policy.normalizer.normalize("action", torch.from_numpy(x.known.actions).float())
                weight[j, :, 0] = torch.from_numpy(x.known.weight)
        return Inpaint(target.to(policy.device), weight.to(policy.device))

    def _episode_plan(
        self,
        e: Episode,
        tick: int,
        j: int,
        pred: ChunkPrediction,
        rows: np.ndarray,
        warm: bool,
        times: tuple[int, int, int, int],
    ) -> Plan:
        """Batch row ``j`` of ``pred`` as episode ``e``'s plan (a NaN fault plan if not finite)."""
        t_start, t_obs_done, t_end, den_ns = times
        compute_ms = (t_end - t_start) / 1e6
        if not np.isfinite(rows[j]).all():
            self.log_fault_once("non-finite plan", None)
            return self.fault_plan(e, tick, Fault.NAN, t_start, compute_ms=compute_ms)
        res, s = pred.result, self.policy.sampler
        picard = s.is_parallel
        if picard and s.warm_start:
            sample, x_T = res.sample[j : j + 1].clone(), pred.x_T[j : j + 1].clone()  # (1, H, Da)
            e.previous = (tick, PreviousChunk(sample, x_T, pred.noise[:, j : j + 1].clone()))  # (K, 1, H, Da)
        B = rows.shape[0]
        stats = PlanStats(
            model_calls=res.model_calls,
            model_evals=res.rows_evaluated / B,
            sequential_passes=res.sequential_passes,
            picard_iters=res.iterations if picard else 0,
            converged=int(bool(res.converged[j])),
            final_residual=float(res.final_residual[j]),
            warm_started=warm,
            rows_per_call=tuple(res.rows_per_call),
        )
        plan = Plan(
            chunk=e.n_chunks,
            start=tick,
            actions=rows[j].astype(np.float64),
            fault=Fault.NONE,
            latency_ms=self.model.latency_ms(compute_ms, res.rows_per_call),
            compute_ms=compute_ms,
            denoiser_ms=den_ns / 1e6,
            observation_ms=(t_obs_done - t_start) / 1e6,
            t_obs_ns=t_start,
            t_ready_ns=t_end,
            batch_rows=B,
            stats=stats,
        )
        e.n_chunks += 1
        return plan

    def _noise_and_guess(
        self, eps: list[Episode], ticks: list[int]
    ) -> tuple[Tensor, Tensor, Tensor | None, list[bool]]:
        """Per-episode noise (fresh draws, or the shifted previous noise with CRN) and warm-start guesses.

        Returns:
            x_T (B, H, Da), noise (K, B, H, Da), x0_guess (B, H, Da) or None (no episode warm), and
            which episodes were warm started.
        """
        policy, s = self.policy, self.policy.sampler
        H, Da = policy.config.horizon, policy.config.action_dim
        picard_ws = s.is_parallel and s.warm_start
        xs, ns, guesses, warm = [], [], [], []
        for e, t in zip(eps, ticks, strict=True):
            prev = e.previous if picard_ws else None
            if prev is not None and not 0 < t - prev[0] <= H:
                prev = None
            noise, guess = (None, None)
            if prev is not None:
                noise, guess = next_chunk_inputs(prev[1], t - prev[0], s.common_random_numbers, e.gen)
            if noise is None:
                noise = draw_noise(policy.table, (1, H, Da), [e.gen], device=policy.device)
            xs.append(noise[0])  # (1, H, Da)
            ns.append(noise[1])  # (K, 1, H, Da)
            warm.append(prev is not None)
            guesses.append(guess if guess is not None else torch.zeros_like(noise[0]))
            # (1, H, Da); 0 is the sampler's cold guess under the x0_rollout refill
        x0_guess = torch.cat(guesses, dim=0) if any(warm) else None  # (B, H, Da)
        return torch.cat(xs, dim=0), torch.cat(ns, dim=1), x0_guess, warm

    def fault_plan(
        self, e: Episode, tick: int, fault: Fault, t_start: int, compute_ms: float | None = None
    ) -> Plan:
        """A plan without actions for ``fault`` (it also drops the episode's warm start)."""
        t_end = time.perf_counter_ns()
        ms = compute_ms if compute_ms is not None else (t_end - t_start) / 1e6
        e.previous = None
        plan = Plan(
            chunk=e.n_chunks,
            start=tick,
            actions=None,
            fault=fault,
            latency_ms=self.model.ms if self.model.kind == "fixed" else ms,  # no calls to model
            compute_ms=ms,
            denoiser_ms=0.0,
            observation_ms=0.0,
            t_obs_ns=t_start,
            t_ready_ns=t_end,
            batch_rows=1,
        )
        e.n_chunks += 1
        return plan

    def log_fault_once(self, what: str, exc: BaseException | None) -> None:
        """Warn on the run's first policy fault (with its exception); later faults are only counted."""
        if not self.error_logged:
            self.error_logged = True
            log.warning(
                "policy fault (%s): using the fallback action; further faults are only counted",
                what,
                exc_info=exc,
            )
