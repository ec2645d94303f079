"""`parapolicy-compare`: sequential DDPM vs ParaDDPM (and any other samplers) on the same seeds and noise.

Runs every sampler in every control mode (default: frozen over the 50 reference test seeds, then
realtime_sim at 10 Hz over the first 6), prints the side-by-side table and writes ``compare.json``,
``<sampler>/eval_info.json``, per-step CSVs, plots and videos into the run folder (see
`parapolicy.policy.compare`).
"""

from __future__ import annotations

import hydra

from parapolicy.policy.compare import CompareConfig, format_table, run_compare

from ._hydra import CONFIG_PATH, VERSION_BASE, register_schema, run_dir, to_dataclass

register_schema("compare_schema", CompareConfig)


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="compare")
def main(cfg) -> None:
    """Compare the samplers and print the table."""
    app: CompareConfig = to_dataclass(cfg)
    out = run_dir()
    summary = run_compare(app, out)
    print(format_table(summary["table"]))
    for note in summary["notes"]:
        print(f"note: {note}")
    for name, check in summary["checks"].items():
        diffs = ", ".join(f"{k} {v:+.3f}" for k, v in check["diff_vs_baseline"].items() if k != app.baseline)
        mode = name.split("_score")[0]
        rule = f"within +-{check['tolerance']}" if "tolerance" in check else "not below"
        print(f"{mode} mean score vs {app.baseline}: {diffs} ({'ok' if check['ok'] else 'NOT'} {rule})")
    run = summary["run"]
    print(
        f"load average {run['load_avg_1m_start']:.1f} -> {run['load_avg_1m_end']:.1f}",
        f"-> {out / 'compare.json'}",
    )


if __name__ == "__main__":
    main()
