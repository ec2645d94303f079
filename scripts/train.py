"""`parapolicy-train`: train a diffusion policy on a demonstration store (see policy/train.py)."""

from __future__ import annotations

import hydra

from parapolicy.policy.train import TrainConfig, train

from ._hydra import (
    CONFIG_PATH,
    VERSION_BASE,
    command,
    is_main_rank,
    register_schema,
    run_dir,
    to_dataclass,
    torchrun_main,
)

register_schema("train_schema", TrainConfig)


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="train")
@command("parapolicy-train")
def _train(cfg) -> None:
    """Train; resume a run with ``hydra.run.dir=<run folder> resume=true``."""
    ckpt = train(to_dataclass(cfg), run_dir())
    if is_main_rank():
        print(f"final checkpoint: {ckpt / 'pretrained_model'}")


def main() -> None:
    """`parapolicy-train`; also ``torchrun --nproc-per-node=N -m parapolicy.scripts.train`` (DDP)."""
    torchrun_main(_train)


if __name__ == "__main__":
    main()
