"""The option names of the diffusion core, torch-free so that `parapolicy.policy.config` can import them.

The core validates its own arguments against these tuples; config.py re-exports them and checks its
dataclass fields against the same tuples, so each name list exists once. Update-rule names
(`SAMPLER_KINDS`) come from the rule registry in `rules/`, which is also torch-free at import time.
Imports nothing but the rule registry (`tests/test_layout.py` checks that no torch is loaded).
"""

from __future__ import annotations

from parapolicy.policy.diffusion.rules import SAMPLER_KINDS

__all__ = [
    "ALGORITHMS",
    "BETA_SCHEDULES",
    "COARSE_MODELS",
    "ON_MAX_ITERS",
    "PARALLEL_ALGORITHMS",
    "PREDICTION_TYPES",
    "REFILL_RULES",
    "UPDATE_RULES",
    "SAMPLER_KINDS",
    "TIMESTEP_SPACINGS",
]

BETA_SCHEDULES = ("squaredcos_cap_v2", "linear")
"""Training noise schedules (`schedules.make_alphas_cumprod`)."""
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
"""What the denoiser predicts (`step.predict_x0`)."""
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace", "dpm_leading", "dpm_linspace")
"""How K inference timesteps spread over T training ones (`schedules.make_timesteps`)."""
ALGORITHMS = ("sequential", "picard")
"""Execution orders (`dispatch.run_sampler`)."""
PARALLEL_ALGORITHMS = ("picard",)
"""The execution orders that evaluate a window of steps per denoiser call (use `window`, `tol`, ...)."""
ON_MAX_ITERS = ("finish_sequential", "return_iterate")
"""What Picard returns for samples still running at `max_iters` (`picard.sample_picard`)."""
REFILL_RULES = ("window_end", "x0_rollout")
"""How Picard guesses the slots a slide exposes (`picard.sample_picard`)."""
UPDATE_RULES = ("picard", "parareal")
"""How Picard corrects a window's slots for the change of the slots before them (`picard.sample_picard`)."""
COARSE_MODELS = ("held_x0", "linear")
"""The Parareal update's model of a step: x̂₀ held fixed, or x̂₀ following x (`coarse`)."""
