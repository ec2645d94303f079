"""`parapolicy-profile`: per-control-step latency profile of one sampler in one control mode.

Settings and the job itself: `parapolicy.policy.profile` (ProfileConfig, run_profile).
"""

from __future__ import annotations

import hydra

from parapolicy.policy.profile import ProfileConfig, format_profile, run_profile
from parapolicy.policy.run_health import DEFAULT_MAX_REJECTED_SHARE, check_rejected_share

from ._hydra import CONFIG_PATH, VERSION_BASE, command, register_schema, run_dir, to_dataclass

register_schema("profile_schema", ProfileConfig)


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="profile")
@command("parapolicy-profile")
def main(cfg) -> None:
    """Profile and print the summary."""
    out = run_dir()
    summary = run_profile(to_dataclass(cfg), out)
    print(format_profile(summary))
    print(f"-> {out / 'latency' / 'summary.json'}")
    check_rejected_share(
        summary["aggregated"], DEFAULT_MAX_REJECTED_SHARE, str(out / "latency" / "summary.json")
    )


if __name__ == "__main__":
    main()
