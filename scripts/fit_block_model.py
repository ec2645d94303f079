"""Fit PushT's block model (``control.forecast=robot_and_block``) on a demonstration store (no hydra).

    python -m parapolicy.scripts.fit_block_model assets/pusht_expert.zarr assets/pusht_block_model

Writes a new directory (config.json + model.safetensors; never overwrites). The model and what it
learns: `parapolicy.policy.control.tasks.pusht_block_model`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from parapolicy.policy.control.tasks.pusht_block_model import BlockMotionModel, block_pose_from_keypoints
from parapolicy.policy.data.replay_store import ReplayStore
from parapolicy.policy.errors import ParapolicyError


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
    if args.max_delay < 1 or args.steps < 1:
        parser.error(f"--max-delay and --steps must be >= 1, got {args.max_delay} and {args.steps}")
    if Path(args.out).exists():
        parser.error(f"{args.out} exists; the model is written to a new directory (never overwritten)")
    try:
        with ReplayStore.open(args.store, keys=("state", "keypoint"), mode="r") as store:
            keypoints, pusher, ends = store["keypoint"], store["state"][:, 0:2], store.episode_ends
    except ParapolicyError as exc:  # no store there, or not one in the layout: one line, its exit code
        parser.exit(exc.exit_code, f"{parser.prog}: error: {exc}\n")
    block = np.stack([block_pose_from_keypoints(k) for k in keypoints])  # (T, 3)
    model = BlockMotionModel.fit(pusher, block, ends, max_delay=args.max_delay, steps=args.steps)
    info = {"fitted_on": str(args.store), "episodes": int(len(ends)), "steps": args.steps}
    print(f"wrote {model.save(args.out, info)}")


if __name__ == "__main__":
    main()
