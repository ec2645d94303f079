"""`parapolicy-compare`: sequential DDPM vs ParaDDPM (and any other samplers) on the same seeds and noise.

Runs every sampler in every control mode (default: frozen over the 50 reference test seeds, then
realtime_sim at 10 Hz over the first 6) on the chosen task (``task=pusht`` or ``task=gym_pusht``),
prints the side-by-side table and writes ``compare.json``, ``<sampler>/eval_info.json``, per-step
CSVs, plots and videos into the run folder. Settings and the job: `parapolicy.policy.compare`.
"""

from __future__ import annotations

import hydra

from parapolicy.policy.compare import CompareConfig, format_report, run_compare
from parapolicy.policy.run_health import DEFAULT_MAX_REJECTED_SHARE, check_rejected_shares

from ._hydra import CONFIG_PATH, VERSION_BASE, command, register_schema, run_dir, to_dataclass

register_schema("compare_schema", CompareConfig)


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="compare")
@command("parapolicy-compare")
def main(cfg) -> None:
    """Compare the samplers and print the table."""
    out = run_dir()
    summary = run_compare(to_dataclass(cfg), out)
    print(format_report(summary, out))
    aggregates = {f"{n} {m}": b["aggregated"] for n, per in summary["runs"].items() for m, b in per.items()}
    check_rejected_shares(aggregates, DEFAULT_MAX_REJECTED_SHARE, str(out / "compare.json"))


if __name__ == "__main__":
    main()
