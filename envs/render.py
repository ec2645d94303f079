"""Headless rendering of PushT frames with OpenCV (no display, no pygame).

Scene as in the reference: 512 x 512 white canvas, goal T filled LightGreen, block LightSlateGray
(fill lightened x1.2, darker 2 px outline), pusher RoyalBlue disc r=15 with a lighter inner disc
r=11, LightGray walls 4 px wide; the canvas is then resized bilinearly to the requested size.
The action marker (a red cross at the commanded target) is drawn only by `draw_action_marker`, which
the env calls for `render()` frames, never for observations.
"""

from __future__ import annotations

import cv2
import numpy as np

from .geometry import BAR_VERTICES, GOAL_POSE, STEM_VERTICES, WORLD_SIZE, local_to_world
from .physics import AGENT_RADIUS, WALL_SEGMENTS

_CANVAS = int(WORLD_SIZE)
LIGHT_GREEN = (144, 238, 144)
LIGHT_SLATE_GRAY = (119, 136, 153)
ROYAL_BLUE = (65, 105, 225)
LIGHT_GRAY = (211, 211, 211)
RED = (255, 0, 0)


def _lighten(color: tuple[int, int, int], factor: float = 1.2) -> tuple[int, int, int]:
    return tuple(int(min(255.0, c * factor)) for c in color)


def _darken(color: tuple[int, int, int], factor: float = 0.7) -> tuple[int, int, int]:
    return tuple(int(c * factor) for c in color)


def _box_polygons(pose: np.ndarray) -> list[np.ndarray]:
    return [np.round(local_to_world(v, pose)).astype(np.int32) for v in (BAR_VERTICES, STEM_VERTICES)]


def _make_background() -> np.ndarray:
    canvas = np.full((_CANVAS, _CANVAS, 3), 255, dtype=np.uint8)  # (H, W, 3) RGB, y down
    cv2.fillPoly(canvas, _box_polygons(GOAL_POSE), LIGHT_GREEN)
    for a, b in WALL_SEGMENTS:
        cv2.line(canvas, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), LIGHT_GRAY, 4)
    return canvas


_BACKGROUND = _make_background()


def render_scene(agent_position: np.ndarray, block_pose: np.ndarray, size: int) -> np.ndarray:
    """Draw the scene and resize it to ``(size, size, 3)`` uint8 RGB."""
    canvas = _BACKGROUND.copy()
    polys = _box_polygons(block_pose)
    cv2.fillPoly(canvas, polys, _lighten(LIGHT_SLATE_GRAY))
    cv2.polylines(canvas, polys, isClosed=True, color=_darken(LIGHT_SLATE_GRAY), thickness=2)
    center = (int(round(agent_position[0])), int(round(agent_position[1])))
    cv2.circle(canvas, center, int(AGENT_RADIUS), ROYAL_BLUE, -1)
    cv2.circle(canvas, center, int(AGENT_RADIUS) - 4, _lighten(ROYAL_BLUE), -1)
    if size == _CANVAS:
        return canvas
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_LINEAR)


def draw_action_marker(frame: np.ndarray, action: np.ndarray) -> np.ndarray:
    """Draw a red upright cross (+) at world point ``action`` on a rendered frame, as the reference
    does (`cv2.MARKER_CROSS`, size 8/96 and thickness 1/96 of the frame; in place; returns it)."""
    size = frame.shape[0]
    scale = size / WORLD_SIZE
    x, y = int(round(action[0] * scale)), int(round(action[1] * scale))
    marker, thickness = max(1, int(size * 8 / 96)), max(1, int(size / 96))
    cv2.drawMarker(frame, (x, y), RED, cv2.MARKER_CROSS, marker, thickness)
    return frame
