"""The rollout entry points: `run_rollouts` (any control mode), `evaluate_policy` (the reference
protocol) and `plan_for_budget` (the automatic Picard window/iteration choice); no hydra.

Three control modes (full semantics, with worked examples, in ``docs/control_modes.md``):

- ``frozen``: the world waits for the policy (the reference protocol; isolates sample quality). Up to
  ``eval.batch_size`` episodes run in lockstep and are planned in one batched call;
  `evaluate_policy` is this mode with the reference protocol's settings.
- ``realtime_sim``: a deterministic simulation of a robot that does not wait. A plan requested from the
  observation at tick s becomes usable at tick ``s + ceil(latency / period)``; meanwhile the robot keeps
  executing the previous plan (its Ta rows, then, with ``use_plan_tail``, the rows it predicted beyond
  them) or, when none remain, misses the tick (``on_miss``). When the plan arrives, its actions for
  ticks already past are discarded ("ticks lost"); if all are past, the last one is executed now. The
  latency is the measured one or comes from ``latency_model`` (``fixed:<ms>`` or
  ``per_call:<ms>[,<ms_per_row>]``), which makes a run reproducible.
- ``wallclock``: the same controller paced by the real clock at ``hz``; the next plan is computed on a
  background thread while the current one executes.

Plans are requested every Ta ticks (or as soon as the planner is free when a plan was late). Each
episode draws its noise from its own CPU generator (`evaluation.episode_generator`), one draw per plan,
so samplers with the same number of steps consume identical noise. The output guard replaces a plan
with a non-finite action, a denoiser exception or an invalid observation by the task's safe action
(PushT: hold the pusher where it is), counted; nothing non-finite ever reaches ``env.step``.

The environment is a `task.Task` (default: PushT-v0 serving the policy's observation type, low-dim or
images, ``tasks.task_for_policy("pusht", policy.config)``); the controller
itself (`controller.Controller`, split into `planner`, `timeline` and `records`) knows no task.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.control.controller import Controller, check_policy_settings
from parapolicy.policy.control.evaluation import EvalConfig
from parapolicy.policy.control.records import RolloutResult
from parapolicy.policy.control.settings import MODES, ON_MISS, ControlConfig, LatencyModel
from parapolicy.policy.control.task import Task
from parapolicy.policy.control.tasks import task_for_policy
from parapolicy.policy.model.policy import DiffusionPolicy


# --------------------------------------------------------------------------------------------------
# budget
def plan_for_budget(
    policy: DiffusionPolicy,
    sampler: SamplerConfig,
    budget_ms: float,
    margin: float = 0.9,
    candidates: Sequence[int] | None = None,
) -> tuple[SamplerConfig, dict[str, Any]]:
    """Choose the Picard window and iteration cap that fit ``budget_ms`` on this device.

    The window is the one with the smallest expected plan latency (`auto_window.choose_window`: the
    measured cost of each call's rows, summed over a real solve on calibration observations). The cap is
    the number of iterations at the chosen window's per-call cost that fit ``margin * budget_ms`` (the
    smaller of it and the sampler's own cap). A sequential sampler is kept as is; the report says
    whether its expected latency (K calls on one row) fits.

    Returns:
        (the sampler to run, a report: candidates' expected ms, cost curve, chosen settings,
        ``expected_ms`` and ``meets_budget``).
    """
    from parapolicy.policy.runtime import auto_window  # measured cost curve, cached per device

    usable = budget_ms * margin
    K = policy.table.num_steps
    if not sampler.is_parallel:
        curve = auto_window.denoiser_cost_curve(policy, (1, 2))
        expected = K * auto_window.interpolate_cost(curve, 1)
        report = {"budget_ms": budget_ms, "margin": margin, "expected_ms": expected}
        report.update(cost_curve_ms=curve, meets_budget=expected <= usable, changed=False)
        return sampler, report
    previous = policy.sampler
    kwargs = {} if candidates is None else {"candidates": tuple(int(c) for c in candidates)}
    try:
        policy.set_sampler(sampler)
        window, report = auto_window.choose_window(policy, sampler, **kwargs)
    finally:
        policy.set_sampler(previous)
    per_call = auto_window.interpolate_cost(report["cost_curve_ms"], window)
    cap = max(1, int(usable // per_call)) if per_call > 0 else K
    if sampler.max_iters is not None:
        cap = min(cap, sampler.max_iters)
    chosen = dataclasses.replace(sampler, window=window, max_iters=cap)
    expected = float(report["expected_ms"][window])
    report = {
        **report,
        "budget_ms": budget_ms,
        "margin": margin,
        "per_call_ms": per_call,
        "window": window,
        "max_iters": cap,
        "expected_ms": expected,
        "meets_budget": expected <= usable,
        "changed": True,
    }
    return chosen, report


def run_rollouts(
    policy: DiffusionPolicy,
    eval_cfg: EvalConfig,
    control: ControlConfig,
    video_dir: Path | None = None,
    video_prefix: str = "eval_episode_",
    on_steps: Callable[[int], None] | None = None,
    on_episode: Callable[[dict[str, Any]], None] | None = None,
    env_factory: Callable[[], Any] | None = None,
    task: Task | None = None,
) -> RolloutResult:
    """Run closed-loop episodes of ``policy`` under ``control``; see `Controller` and the module docs.

    With ``control.auto_budget`` the sampler's window and iteration cap are first chosen for the budget
    (`plan_for_budget`); the policy's own sampler is restored afterwards. The environment is ``task``
    (default PushT-v0 with the policy's observations, `tasks.task_for_policy`); ``env_factory`` replaces
    PushT-v0's env (tests pass instrumented envs).

    Raises:
        ValueError: on settings this policy cannot run (e.g. ``control.n_action_steps`` too large).
    """
    if task is None:
        task = task_for_policy("pusht", policy.config, env_factory=env_factory)
    elif env_factory is not None:
        raise ValueError("pass either task or env_factory, not both")
    original = policy.sampler
    report = None
    if control.auto_budget:
        chosen, report = plan_for_budget(policy, original, control.effective_budget_ms, control.budget_margin)
        policy.set_sampler(chosen)
    try:
        controller = Controller(policy, control, eval_cfg, task)
        result = controller.run(video_dir, video_prefix, on_steps=on_steps, on_episode=on_episode)
    finally:
        if control.auto_budget:
            policy.set_sampler(original)
    result.budget = report
    return result


def reference_control() -> ControlConfig:
    """The control settings of the reference evaluation protocol (`evaluate_policy`)."""
    return ControlConfig(mode="frozen", warmup_plans=0)


def evaluate_policy(
    policy: DiffusionPolicy,
    cfg: EvalConfig,
    video_dir: Path | None = None,
    on_episode: Callable[[dict[str, Any]], None] | None = None,
    task: Task | None = None,
) -> dict[str, Any]:
    """The reference evaluation protocol: ``frozen`` rollouts, returned as ``eval_info.json``'s body.

    Episodes from the reference initial-state sampler (seeds ``cfg.start_seed ..``), up to
    ``cfg.batch_size`` in lockstep with one batched plan per replanning, noise per episode from
    `evaluation.episode_generator`, the policy's own sampler and ``n_action_steps``; no warm-up plans.

    Args:
        policy: the policy (its current sampler is used).
        cfg: evaluation settings.
        video_dir: where ``eval_episode_<i>.mp4`` go (None: no videos).
        on_episode: called with each finished episode's record (progress reporting).
        task: the environment (default PushT-v0).

    Returns:
        ``{"per_episode": [...], "aggregated": {...}}`` (`evaluation.aggregate` metrics plus the
        controller's counters).
    """
    bar = tqdm(total=cfg.n_episodes, desc="eval", disable=not cfg.progress, leave=False)
    successes = 0

    def finished(record: dict[str, Any]) -> None:
        nonlocal successes
        successes += int(record["success"])
        bar.update(1)
        bar.set_postfix(success=f"{successes}/{bar.n}")
        if on_episode is not None:
            on_episode(record)

    try:
        result = run_rollouts(
            policy,
            cfg,
            reference_control(),
            video_dir=video_dir,
            on_episode=finished,
            task=task,
        )
    finally:
        bar.close()
    return {"per_episode": result.per_episode, "aggregated": result.aggregated}


__all__ = [
    "MODES",
    "ON_MISS",
    "ControlConfig",
    "Controller",
    "LatencyModel",
    "RolloutResult",
    "check_policy_settings",
    "evaluate_policy",
    "plan_for_budget",
    "reference_control",
    "run_rollouts",
]
