"""Fit PushT's block model (``control.forecast=robot_and_block``) on a demonstration store (no hydra).

    python -m parapolicy.scripts.fit_block_model assets/pusht_expert.zarr assets/pusht_block_model

Writes a new directory (config.json + model.safetensors; never overwrites). The model and what it
learns: `parapolicy.policy.control.tasks.pusht_block_model`.
"""

from __future__ import annotations

import argparse

import numpy as np

from parapolicy.policy.control.tasks.pusht_block_model import BlockMotionModel, block_pose_from_keypoints
from parapolicy.policy.data.replay_store import ReplayStore


def main(argv: list[str] | None = None) -> None:
    """Fit on ``store`` (its pusher positions and block keypoints) and write the model to ``out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "store", help="a demonstration store with state and keypoint rows (parapolicy-collect)"
    )
    parser.add_argument("out", help="the directory to create")
    parser.add_argument("--max-delay", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args(argv)
    store = ReplayStore.open(args.store, keys=("state", "keypoint"), mode="r")
    block = np.stack([block_pose_from_keypoints(k) for k in store["keypoint"]])  # (T, 3)
    ends = store.episode_ends
    model = BlockMotionModel.fit(
        store["state"][:, 0:2], block, ends, max_delay=args.max_delay, steps=args.steps
    )
    info = {"fitted_on": str(args.store), "episodes": int(len(ends)), "steps": args.steps}
    print(f"wrote {model.save(args.out, info)}")


if __name__ == "__main__":
    main()
