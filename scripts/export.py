"""`parapolicy-export`: write a checkpoint as a LeRobot diffusion directory or as this project's own
directory (see `parapolicy.policy.export`).

parapolicy-export policy_path=<dir or .ckpt> format=lerobot|parapolicy output_path=<dir>
"""

from __future__ import annotations

import hydra

from parapolicy.policy.export import ExportConfig, run_export

from ._hydra import CONFIG_PATH, VERSION_BASE, command, register_schema, to_dataclass

register_schema("export_schema", ExportConfig)


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="export")
@command("parapolicy-export")
def main(cfg) -> None:
    """Export and print where it went."""
    app: ExportConfig = to_dataclass(cfg)
    out = run_export(app)
    print(f"wrote {app.format} checkpoint {out} (read it back with load_policy / policy_path={out})")


if __name__ == "__main__":
    main()
