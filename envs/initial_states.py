"""Initial-state samplers for PushT.

`reference_initial_state` reproduces the reference's evaluation starts exactly: the diffusion_policy
env re-creates ``np.random.RandomState(seed)`` on every reset and draws
``[randint(50, 450), randint(50, 450), randint(100, 400), randint(100, 400), randn() * 2pi - pi]``
= (agent x, agent y, block x, block y, block angle). Feed the result to
``env.reset(options={"reset_to_state": ...})`` (legacy set order) to get the published starts for the
test seeds 100000..100049.
"""

from __future__ import annotations

import math

import numpy as np

REFERENCE_TEST_START_SEED = 100000


def reference_initial_state(seed: int) -> np.ndarray:
    """The reference sampler's ``(5,)`` initial state vector for ``seed`` (RandomState recipe)."""
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rs = np.random.RandomState(int(seed))
    return np.array(
        [
            rs.randint(50, 450),
            rs.randint(50, 450),
            rs.randint(100, 400),
            rs.randint(100, 400),
            rs.randn() * 2 * math.pi - math.pi,
        ],
        dtype=np.float64,
    )


def sample_initial_state(rng: np.random.Generator) -> np.ndarray:
    """The same distribution as the reference sampler, drawn from a numpy ``Generator``."""
    return np.array(
        [
            rng.integers(50, 450),
            rng.integers(50, 450),
            rng.integers(100, 400),
            rng.integers(100, 400),
            rng.standard_normal() * 2 * math.pi - math.pi,
        ],
        dtype=np.float64,
    )
