"""`parapolicy-demo`: one PushT episode with a naive scripted pusher; writes an MP4 and a PNG strip."""

from __future__ import annotations

import hydra

from parapolicy.envs.demo import DemoConfig, run_demo
from parapolicy.policy.run_dir import write_result

from ._hydra import CONFIG_PATH, VERSION_BASE, command, register_schema, run_dir, to_dataclass

register_schema("demo_schema", DemoConfig)


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="demo")
@command("parapolicy-demo", outputs=("demo.json", "demo.mp4", "demo_strip.png"))
def main(cfg) -> None:
    """Run the demo episode and print its coverage."""
    summary = run_demo(to_dataclass(cfg), run_dir())
    print(
        f"seed {summary['seed']}: {summary['steps']} steps, coverage {summary['initial_coverage']:.3f} -> "
        f"{summary['final_coverage']:.3f} (max {summary['max_coverage']:.3f}), success={summary['success']}"
    )
    print(f"video: {summary['video']}\nstrip: {summary['strip']}")
    write_result(run_dir() / "demo.json", summary)


if __name__ == "__main__":
    main()
