"""`parapolicy-bench-env`: time the PushT env (ms per step and reset, vector-env throughput)."""

from __future__ import annotations

import hydra

from parapolicy.envs.benchmark import EnvBenchConfig, format_env_benchmark, run_env_benchmark
from parapolicy.policy.run_dir import write_result

from ._hydra import CONFIG_PATH, VERSION_BASE, command, register_schema, run_dir, to_dataclass

register_schema("bench_env_schema", EnvBenchConfig)


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="bench_env")
@command("parapolicy-bench-env", outputs=("bench_env.json",))
def main(cfg) -> None:
    """Run the benchmark, print the table and write ``bench_env.json`` in the run dir."""
    result = run_env_benchmark(to_dataclass(cfg))
    print(format_env_benchmark(result))
    print(f"wrote {write_result(run_dir() / 'bench_env.json', result)}")


if __name__ == "__main__":
    main()
