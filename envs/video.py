"""Write RGB frames to an H.264 MP4 with PyAV (no hydra, no torch)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np


def check_video_output(directory: str | Path) -> Path:
    """Fail fast, before any rollout, if videos could not be written to ``directory``.

    Creates the directory, checks it is writable and that the H.264 encoder is available.

    Raises:
        OSError: if the directory cannot be created or written.
        RuntimeError: if PyAV has no libx264 encoder.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / ".write_probe"
    probe.write_bytes(b"")
    probe.unlink()
    try:
        av.codec.Codec("libx264", "w")
    except Exception as exc:  # PyAV raises its own error types here
        raise RuntimeError(f"PyAV cannot encode H.264 (libx264 missing): {exc}") from exc
    return directory


def write_mp4(path: str | Path, frames: Sequence[np.ndarray], fps: int = 10, crf: int = 22) -> Path:
    """Encode ``frames`` (each ``(H, W, 3)`` uint8 RGB, even H and W) to ``path``.

    The file is written to a temporary name and renamed at the end, so a failed encode never leaves
    a half-written video behind.

    Raises:
        ValueError: on an empty sequence, or frames of the wrong shape, dtype or odd size.
    """
    if len(frames) == 0:
        raise ValueError("write_mp4 needs at least one frame")
    height, width = frames[0].shape[:2]
    for i, frame in enumerate(frames):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape != (height, width, 3):
            raise ValueError(
                f"frame {i} must be ({height}, {width}, 3) uint8, got {frame.shape} {frame.dtype}"
            )
    if height % 2 or width % 2:
        raise ValueError(f"H.264 yuv420p needs even frame sizes, got {width}x{height}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": str(crf)}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
