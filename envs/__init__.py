"""PushT environment package. Importing it registers ``parapolicy/PushT-v0`` with Gymnasium.

No hydra or torch imports here: async vector-env workers import this module to find the env.
"""

from gymnasium.envs.registration import register, registry

from .geometry import GOAL_POSE, KEYPOINTS_LOCAL, SUCCESS_THRESHOLD, coverage
from .initial_states import REFERENCE_TEST_START_SEED, reference_initial_state, sample_initial_state
from .pusht import OBS_TYPES, PushTEnv, validate_action, validate_reset_state

ENV_ID = "parapolicy/PushT-v0"
MAX_EPISODE_STEPS = 300

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="parapolicy.envs.pusht:PushTEnv", max_episode_steps=MAX_EPISODE_STEPS)

__all__ = [
    "ENV_ID",
    "GOAL_POSE",
    "KEYPOINTS_LOCAL",
    "MAX_EPISODE_STEPS",
    "OBS_TYPES",
    "REFERENCE_TEST_START_SEED",
    "SUCCESS_THRESHOLD",
    "PushTEnv",
    "coverage",
    "reference_initial_state",
    "sample_initial_state",
    "validate_action",
    "validate_reset_state",
]
