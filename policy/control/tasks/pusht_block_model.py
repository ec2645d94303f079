"""A learned model of how PushT's block moves under the pusher: the object half of
``control.forecast=robot_and_block``.

The block moves only while the pusher pushes it, and the pusher's path over the next d ticks is known
exactly (its PD law through the actions the robot will send, `envs.physics.forecast_pusher`). So the
block's pose d ticks ahead is a function of its pose now and that path; `BlockMotionModel` learns it
from demonstrations (a demonstration store's pusher positions and block keypoints), one small MLP per
delay d = 1..`max_delay`, everything in the block's frame (the path relative to the block, rotated by its
angle), so that the model does not depend on where the block is. It is what a robot can deploy: learned
from its own demonstrations, with no simulator. A delay beyond `max_delay` chains predictions. A pose
here is the one `block_pose_from_keypoints` recovers from the 9 keypoints (a rigid fit; its origin is
that of `envs.geometry.KEYPOINTS_LOCAL`, not the physics body's centre that the store's ``state`` rows
hold), so training and the forecast read the block the same way.

The shipped model (``assets/pusht_block_model``) is fitted, bit for bit, by
``python -m parapolicy.scripts.fit_block_model assets/pusht_expert.zarr <out>`` (under a minute on 2 cores).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from parapolicy.envs.geometry import KEYPOINTS_LOCAL, rotation
from parapolicy.policy.config import REPOSITORY_ROOT
from parapolicy.policy.model.checkpoint import write_atomic_dir

__all__ = ["BlockMotionModel", "block_pose_from_keypoints", "DEFAULT_BLOCK_MODEL"]

DEFAULT_BLOCK_MODEL = REPOSITORY_ROOT / "assets" / "pusht_block_model"
_CONFIG, _WEIGHTS = "config.json", "model.safetensors"
_PATH_SCALE, _MOVE_SCALE, _ANGLE_SCALE = 100.0, 10.0, 10.0  # px, px, 1/rad: inputs and targets near 1


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


def _to_block_frame(v: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Rotate vectors (..., 2) by -theta (theta broadcast over the leading axes)."""
    c, s = np.cos(theta)[..., None], np.sin(theta)[..., None]
    return np.concatenate([c * v[..., :1] + s * v[..., 1:], -s * v[..., :1] + c * v[..., 1:]], -1)


def block_pose_from_keypoints(keypoints: np.ndarray) -> np.ndarray:
    """The block pose (x, y, angle) whose reference keypoints are ``keypoints`` ((9, 2) or (18,) world px):
    the least-squares rigid fit, exact for exact keypoints."""
    world = np.asarray(keypoints, dtype=np.float64).reshape(9, 2)
    lc, wc = KEYPOINTS_LOCAL.mean(0), world.mean(0)
    local, w = KEYPOINTS_LOCAL - lc, world - wc
    theta = math.atan2(float((local[:, 0] * w[:, 1] - local[:, 1] * w[:, 0]).sum()), float((local * w).sum()))
    origin = wc - rotation(theta) @ lc
    return np.array([origin[0], origin[1], theta])


def _mlp(d: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(2 * (d + 1), hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 3)
    )


class BlockMotionModel(nn.Module):
    """The block's pose d ticks ahead from its pose now and the pusher's path (see the module docstring).

    Args:
        max_delay: the largest delay with its own network (longer delays chain predictions).
        hidden: width of each network's two hidden layers.
    """

    def __init__(self, max_delay: int = 8, hidden: int = 128) -> None:
        super().__init__()
        if max_delay < 1 or hidden < 1:
            raise ValueError(f"max_delay and hidden must be >= 1, got {max_delay}, {hidden}")
        self.max_delay, self.hidden = int(max_delay), int(hidden)
        self.nets = nn.ModuleDict({str(d): _mlp(d, hidden) for d in range(1, max_delay + 1)})

    @staticmethod
    def features(block: np.ndarray, path: np.ndarray) -> np.ndarray:
        """Inputs ((..., 2(d+1))) from block poses (..., 3) and pusher paths (..., d+1, 2), world px."""
        rel = _to_block_frame(path - block[..., None, :2], block[..., None, 2])  # (..., d+1, 2)
        return (rel / _PATH_SCALE).reshape(*rel.shape[:-2], -1)

    @torch.no_grad()
    def predict(self, block: np.ndarray, path: np.ndarray) -> np.ndarray:
        """The block pose (3,) after the pusher moved along ``path`` ((d+1, 2): now, then after each of
        the d ticks) from ``block`` (3,) now; d = 0 returns ``block``."""
        pose, path = np.asarray(block, dtype=np.float64), np.asarray(path, dtype=np.float64)
        while len(path) > 1:
            d = min(len(path) - 1, self.max_delay)
            x = torch.as_tensor(self.features(pose, path[: d + 1]), dtype=torch.float32)
            y = self.nets[str(d)](x[None])[0].double().numpy()  # (3,) move in the block frame, turn
            move = rotation(float(pose[2])) @ (y[:2] * _MOVE_SCALE)  # back to the world frame
            pose = pose + np.array([move[0], move[1], y[2] / _ANGLE_SCALE])
            path = path[d:]
        return pose

    @classmethod
    def fit(
        cls,
        pusher: np.ndarray,
        block: np.ndarray,
        episode_ends: np.ndarray,
        max_delay: int = 8,
        hidden: int = 128,
        steps: int = 3000,
        seed: int = 0,
    ) -> BlockMotionModel:
        """Fit on demonstrations: ``pusher`` (T, 2) positions and ``block`` (T, 3) poses per step, split
        into episodes by ``episode_ends``; deterministic for a seed."""
        model = cls(max_delay, hidden)
        gen = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():  # seeded, whatever the global RNG
            with torch.no_grad():
                p.copy_(
                    torch.randn(p.shape, generator=gen)
                    * (0.0 if name.endswith("bias") else 1.0 / math.sqrt(p.shape[-1]))
                )
        for d in range(1, max_delay + 1):
            x, y = _pairs(pusher, block, episode_ends, d)
            _train(
                model.nets[str(d)],
                torch.as_tensor(x, dtype=torch.float32),
                torch.as_tensor(y, dtype=torch.float32),
                steps,
                gen,
            )
        return model.eval()

    def save(self, path: str | Path, info: dict | None = None) -> Path:
        """Write the model as a new directory (config.json + model.safetensors; never overwritten)."""
        config = {
            "kind": "pusht_block_motion",
            "max_delay": self.max_delay,
            "hidden": self.hidden,
            **(info or {}),
        }

        def write(tmp: Path) -> None:
            (tmp / _CONFIG).write_text(json.dumps(config, indent=2) + "\n")
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp / _WEIGHTS))

        return write_atomic_dir(Path(path), write)

    @classmethod
    def load(cls, path: str | Path) -> BlockMotionModel:
        """Read a model written by `save`, strictly."""
        root = Path(path)
        try:
            config = json.loads((root / _CONFIG).read_text())
            model = cls(int(config["max_delay"]), int(config["hidden"]))
            model.load_state_dict(load_file(str(root / _WEIGHTS)), strict=True)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ValueError(f"cannot load the PushT block model from {root}: {exc}") from exc
        return model.eval()


def _pairs(
    pusher: np.ndarray, block: np.ndarray, episode_ends: np.ndarray, d: int
) -> tuple[np.ndarray, np.ndarray]:
    """Training pairs for delay d: features (N, 2(d+1)) and targets (N, 3) from every episode."""
    xs, ys = [], []
    start = 0
    for end in np.asarray(episode_ends, dtype=np.int64):
        p, b = np.asarray(pusher[start:end], np.float64), np.asarray(block[start:end], np.float64)  # (L, 2|3)
        start = end
        n = len(p) - d
        if n < 1:
            continue
        now, later = b[:n], b[d : d + n]  # (n, 3) now and d ticks later
        paths = np.stack([p[k : k + n] for k in range(d + 1)], axis=1)  # (n, d+1, 2)
        xs.append(BlockMotionModel.features(now, paths))
        move = _to_block_frame(later[:, :2] - now[:, :2], now[:, 2]) / _MOVE_SCALE
        ys.append(np.concatenate([move, _wrap(later[:, 2:] - now[:, 2:]) * _ANGLE_SCALE], 1))
    if not xs:
        raise ValueError(f"no episode is longer than the delay {d}")
    return np.concatenate(xs), np.concatenate(ys)


def _train(net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, gen: torch.Generator) -> None:
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        i = torch.randint(0, len(x), (512,), generator=gen)
        loss = ((net(x[i]) - y[i]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
