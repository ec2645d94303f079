"""PushT geometry: the T block's polygons, goal pose, keypoints and coverage.

Pure numpy + shapely; no pymunk, no gymnasium. World frame: 512 x 512 pixels, y pointing down,
angles in radians (positive = clockwise on screen), as in the reference task.
"""

from __future__ import annotations

import math

import numpy as np
import shapely

WORLD_SIZE = 512.0
GOAL_POSE = np.array([256.0, 256.0, math.pi / 4.0])
SUCCESS_THRESHOLD = 0.95

# The T's two boxes in the block's local frame, in pymunk's stored CCW order (reference section 1.3).
# The body origin is the midpoint of the bar's outer edge; the stem extends toward +y.
BAR_VERTICES = np.array([[-60.0, 0.0], [60.0, 0.0], [60.0, 30.0], [-60.0, 30.0]])
STEM_VERTICES = np.array([[-15.0, 30.0], [15.0, 30.0], [15.0, 120.0], [-15.0, 120.0]])
T_CORNERS_LOCAL = np.concatenate([BAR_VERTICES, STEM_VERTICES])  # (8, 2): bar then stem
# The T's outline as one simple polygon (same area, 6300 px^2), used for exact coverage.
T_OUTLINE_LOCAL = np.array(
    [
        [-60.0, 0.0],
        [60.0, 0.0],
        [60.0, 30.0],
        [15.0, 30.0],
        [15.0, 120.0],
        [-15.0, 120.0],
        [-15.0, 30.0],
        [-60.0, 30.0],
    ]
)
T_AREA = 6300.0

# The reference's 9 block keypoints (local frame). The reference derives them at start-up by
# rasterising the T with pygame and running farthest-point sampling with default_rng(0); these are
# the values of that procedure re-run with pygame 2.6.1 (reference brief, section 1.6). They could
# not be checked against the reference dataset here (it cannot be downloaded); `docs/keypoints.md`
# gives the procedure to re-derive them from a dataset: k_local = R(-theta) (keypoint - block_pos).
KEYPOINTS_LOCAL = np.array(
    [
        [9.27, 90.04],
        [-60.98, -1.19],
        [60.91, -1.39],
        [-0.27, 25.54],
        [-14.06, 122.82],
        [39.00, 32.86],
        [-39.97, 32.73],
        [-16.82, 62.86],
        [23.54, -1.70],
    ]
)


def rotation(theta: float) -> np.ndarray:
    """2x2 rotation matrix for angle ``theta`` (same convention as pymunk's ``local_to_world``)."""
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def local_to_world(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Map local points ``(..., 2)`` of a body at ``pose = (x, y, theta)`` (origin pose) to world."""
    rot = rotation(float(pose[2]))
    return points @ rot.T + np.asarray(pose[:2], dtype=np.float64)


def keypoints_world(pose: np.ndarray) -> np.ndarray:
    """The 9 reference keypoints ``(9, 2)`` of a block at ``pose``."""
    return local_to_world(KEYPOINTS_LOCAL, pose)


def corners_world(pose: np.ndarray) -> np.ndarray:
    """The 8 box corners ``(8, 2)`` (bar then stem) of a block at ``pose``."""
    return local_to_world(T_CORNERS_LOCAL, pose)


def t_polygon(pose: np.ndarray) -> shapely.Polygon:
    """The T outline at ``pose`` as a shapely polygon."""
    return shapely.Polygon(local_to_world(T_OUTLINE_LOCAL, pose))


_GOAL_POLYGON = t_polygon(GOAL_POSE)


def coverage(pose: np.ndarray, goal_polygon: shapely.Polygon = _GOAL_POLYGON) -> float:
    """Exact fraction of the goal T's area covered by the block at ``pose`` (0..1).

    Equivalent to the reference's MultiPolygon intersection of the two boxes, computed on the T's
    single outline polygon (the two boxes share an edge, so the areas are identical).
    """
    return float(shapely.area(shapely.intersection(goal_polygon, t_polygon(pose)))) / T_AREA


def reward_from_coverage(cov: float) -> float:
    """The reference reward ``clip(coverage / 0.95, 0, 1)``."""
    return float(np.clip(cov / SUCCESS_THRESHOLD, 0.0, 1.0))
