"""Job-level verdict on a finished run: was the output guard busy enough to make the score meaningless?

The controller (`policy/control/controller.py`) never raises on a bad plan: it replaces it by the
fallback action and counts it (``total_nan_chunks``, ``total_denoiser_errors``,
``total_observation_errors`` out of ``total_n_chunks`` in the aggregated record). A run with NaN
weights or a broken sampler therefore still "scores". Commands call `check_rejected_share` after
writing their records, so the records exist and the exit code says the run failed. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from parapolicy.policy.errors import RunFailedError

DEFAULT_MAX_REJECTED_SHARE = 0.05
REJECTED_KEYS = ("total_nan_chunks", "total_denoiser_errors", "total_observation_errors")


def rejected_plan_share(aggregated: Mapping[str, Any]) -> float:
    """Share of plans the output guard rejected (NaN plan, denoiser error, refused observation)."""
    total = int(aggregated.get("total_n_chunks", 0))
    rejected = sum(int(aggregated.get(k, 0)) for k in REJECTED_KEYS)
    return rejected / total if total else 0.0


def check_rejected_shares(runs: Mapping[str, Mapping[str, Any]], max_share: float, where: str) -> None:
    """`check_rejected_share` over several runs (``{label: aggregated}``), naming every failing one.

    Raises:
        RunFailedError: one message listing each run over the limit.
    """
    failures = []
    for label, aggregated in runs.items():
        try:
            check_rejected_share(aggregated, max_share, where)
        except RunFailedError as exc:
            failures.append(f"{label}: {exc}")
    if failures:
        raise RunFailedError(" | ".join(failures))


def check_rejected_share(aggregated: Mapping[str, Any], max_share: float, where: str) -> None:
    """Refuse a run whose guard rejected more than ``max_share`` of its plans.

    Args:
        aggregated: the run's aggregated record (``eval_info.json["aggregated"]``).
        max_share: the largest acceptable share, in [0, 1].
        where: the file holding the records, for the message.

    Raises:
        RunFailedError: naming the share, the counts per cause and where the records are.
    """
    share = rejected_plan_share(aggregated)
    if share > max_share:
        counts = ", ".join(f"{k.removeprefix('total_')} {int(aggregated.get(k, 0))}" for k in REJECTED_KEYS)
        raise RunFailedError(
            f"the output guard rejected {100 * share:.1f}% of {int(aggregated['total_n_chunks'])} plans "
            f"({counts}), more than max_rejected_share={max_share:g}: the score is not meaningful "
            f"(check the checkpoint and the sampler settings); records written to {where}"
        )
