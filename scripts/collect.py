"""`parapolicy-collect`: expert demonstrations into a zarr store (see policy/collect.py)."""

from __future__ import annotations

import hydra

from parapolicy.policy.collect import CollectConfig, collect

from ._hydra import CONFIG_PATH, VERSION_BASE, command, register_schema, run_dir, to_dataclass

register_schema("collect_schema", CollectConfig)


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="collect")
@command("parapolicy-collect", outputs=("collect_info.json",))
def main(cfg) -> None:
    """Collect and print the summary."""
    info = collect(to_dataclass(cfg), run_dir())
    print(
        f"kept {info['episodes_kept']} of {info['episodes_tried']} episodes "
        f"(success {100 * info['success_rate']:.1f}%, mean length {info['mean_length']:.1f}) "
        f"in {info['wall_time_s']:.0f} s -> {info['store']}"
    )


if __name__ == "__main__":
    main()
