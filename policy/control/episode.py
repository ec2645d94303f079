"""`Episode`: the controller's live state of one running episode (env, history, plans, record)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from parapolicy.policy.control.faults import Fault
from parapolicy.policy.control.records import EpisodeRecord, Plan
from parapolicy.policy.diffusion.warm_start import PreviousChunk


@dataclass
class Episode:
    """One running episode.

    Attributes:
        ix, seed: episode index and start seed.
        env: the environment (made by the `Task`).
        gen: the CPU generator of this episode's sampling noise.
        history: the last To task observations (`Task.observation`), each (Do,) or, for image
            policies, ``{"pixels", "agent_pos"}``.
        obs, info: the env's latest observation and info (the task derives the safe action from them).
        record: the outcome and counters.
        frames: video frames, or None when not recorded.
        tick: the current control step.
        plan: the plan being executed; pending: the plan computed but not yet arrived.
        next_request: the tick at which the next plan is requested.
        n_chunks: plans made so far (numbers the next plan).
        previous: what the next plan reuses (warm start), with the tick it was requested at.
        last_target: the last action sent.
        fault_now: a fault to answer with the fallback action at this tick.
        consecutive: missed steps in a row.
        done: the episode has ended.
    """

    ix: int
    seed: int
    env: Any
    gen: torch.Generator
    history: deque
    obs: Any
    info: dict[str, Any]
    record: EpisodeRecord
    frames: list[np.ndarray] | None
    tick: int = 0
    plan: Plan | None = None
    pending: Plan | None = None
    next_request: int = 0
    n_chunks: int = 0
    previous: tuple[int, PreviousChunk] | None = None
    last_target: np.ndarray | None = None
    fault_now: Fault = Fault.NONE
    consecutive: int = 0
    done: bool = False
