"""`parapolicy-bench`: DDPM-100, ParaDDPM and few-step solvers (sequential and Picard), same noise.

Settings: `parapolicy.policy.bench.BenchJobConfig`; the measurement: `run_sampler_benchmark`.
"""

from __future__ import annotations

import dataclasses

import hydra

from parapolicy.policy.bench import (
    BenchJobConfig,
    format_inpaint_overhead,
    format_sampler_benchmark,
    run_inpaint_overhead,
    run_sampler_benchmark,
)
from parapolicy.policy.model.pretrained import load_policy
from parapolicy.policy.run_dir import write_result
from parapolicy.policy.run_info import run_info

from ._hydra import CONFIG_PATH, VERSION_BASE, command, register_schema, run_dir, to_dataclass

register_schema("bench_schema", BenchJobConfig)


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="bench")
@command("parapolicy-bench", outputs=("bench.json",))
def main(cfg) -> None:
    """Print the table and write ``bench.json`` in the run folder."""
    app: BenchJobConfig = to_dataclass(cfg)
    policy = load_policy(app.policy_path, device=app.device)
    inpaint = app.bench.inpaint_delay is not None
    result = (run_inpaint_overhead if inpaint else run_sampler_benchmark)(policy, app.bench)
    result["run"] = {
        **run_info(app.device),
        "policy_path": app.policy_path,
        "bench": dataclasses.asdict(app.bench),
    }
    print((format_inpaint_overhead if inpaint else format_sampler_benchmark)(result))
    print(f"wrote {write_result(run_dir() / 'bench.json', result)}")


if __name__ == "__main__":
    main()
