"""Geometry of the PushT planning expert: contact candidates, clearance, approach paths, target profiles.

Pure-float math (no numpy in the hot paths): these functions run thousands of times per decision.
All positions are world pixels (y down), angles radians, the block pose is its origin ``(x, y, theta)``.

A *contact* is a point on the T's outline with the direction the pusher pushes from: ``(cx, cy, nx, ny)``
in the block frame, ``n`` the unit outward normal. Pushing at a contact means moving the pusher's centre
along ``-n`` on the line ``c + n * s``; contact begins at ``s = AGENT_RADIUS``.
"""

from __future__ import annotations

import math

from .geometry import WORLD_SIZE

Contact = tuple[float, float, float, float]
Point = tuple[float, float]

# The T as two boxes (x0, x1, y0, y1) in the block frame, and its outline with outward normals.
_BOXES = ((-60.0, 60.0, 0.0, 30.0), (-15.0, 15.0, 30.0, 120.0))
_OUTLINE = (
    (-60.0, 0.0),
    (60.0, 0.0),
    (60.0, 30.0),
    (15.0, 30.0),
    (15.0, 120.0),
    (-15.0, 120.0),
    (-15.0, 30.0),
    (-60.0, 30.0),
)
_CONCAVE = ((15.0, 30.0), (-15.0, 30.0))
_QUANTUM = 256.0  # targets are multiples of 1/256 px: exact in float32, so a recorded action replays exactly


def make_contacts(spacing: float, concave_margin: float, corner_normals: int) -> tuple[Contact, ...]:
    """Contact candidates on the T's outline (block frame).

    Faces: points every ``spacing`` px (evenly spread, none at a vertex) with the face normal, except
    within ``concave_margin`` px of the two concave corners, where the pusher can only graze.
    Convex corners: ``corner_normals`` push directions spread strictly inside the corner's normal cone.
    """
    contacts: list[Contact] = []
    n_vert = len(_OUTLINE)
    for i in range(n_vert):
        (ax, ay), (bx, by) = _OUTLINE[i], _OUTLINE[(i + 1) % n_vert]
        length = math.hypot(bx - ax, by - ay)
        tx, ty = (bx - ax) / length, (by - ay) / length
        nx, ny = ty, -tx  # outward for this (clockwise on screen, y down) vertex order
        n_pts = max(1, round(length / spacing))
        for k in range(n_pts):
            u = (k + 0.5) * length / n_pts
            px, py = ax + tx * u, ay + ty * u
            if any(math.hypot(px - qx, py - qy) < concave_margin for qx, qy in _CONCAVE):
                continue
            contacts.append((px, py, nx, ny))
    if corner_normals > 0:
        for i in range(n_vert):
            vx, vy = _OUTLINE[i]
            if (vx, vy) in _CONCAVE:
                continue
            prev_n, next_n = _face_normal(i - 1), _face_normal(i)
            a0 = math.atan2(prev_n[1], prev_n[0])
            da = (math.atan2(next_n[1], next_n[0]) - a0 + math.pi) % (2 * math.pi) - math.pi
            for k in range(corner_normals):
                a = a0 + da * (k + 1) / (corner_normals + 1)
                contacts.append((vx, vy, math.cos(a), math.sin(a)))
    return tuple(contacts)


def _face_normal(i: int) -> Point:
    n_vert = len(_OUTLINE)
    (ax, ay), (bx, by) = _OUTLINE[i % n_vert], _OUTLINE[(i + 1) % n_vert]
    length = math.hypot(bx - ax, by - ay)
    return (by - ay) / length, -(bx - ax) / length


def contact_world(contact: Contact, pose: tuple[float, float, float]) -> tuple[float, float, float, float]:
    """The contact point and its normal in the world frame."""
    cx, cy, nx, ny = contact
    x, y, th = pose
    c, s = math.cos(th), math.sin(th)
    return x + c * cx - s * cy, y + s * cx + c * cy, c * nx - s * ny, s * nx + c * ny


def clearance(px: float, py: float, pose: tuple[float, float, float]) -> float:
    """Distance from world point ``p`` to the T at ``pose`` (0 inside)."""
    x, y, th = pose
    c, s = math.cos(th), math.sin(th)
    dx, dy = px - x, py - y
    lx, ly = c * dx + s * dy, -s * dx + c * dy
    best = 1e9
    for x0, x1, y0, y1 in _BOXES:
        ex = max(x0 - lx, 0.0, lx - x1)
        ey = max(y0 - ly, 0.0, ly - y1)
        best = min(best, math.hypot(ex, ey))
    return best


def segment_clear(a: Point, b: Point, pose: tuple[float, float, float], need: float) -> bool:
    """Whether the pusher centre can move from ``a`` to ``b`` keeping ``need`` px from the T.

    A start closer than ``need`` (the pusher is leaving the block) lowers the bar to its own clearance.
    """
    need = min(need, clearance(a[0], a[1], pose) - 0.5)
    length = math.hypot(b[0] - a[0], b[1] - a[1])
    n = max(1, math.ceil(length / 4.0))
    for k in range(1, n + 1):
        u = k / n
        if clearance(a[0] + (b[0] - a[0]) * u, a[1] + (b[1] - a[1]) * u, pose) < need:
            return False
    return True


def clip_point(px: float, py: float) -> Point:
    """Clip to the pusher's workspace (the env clips targets the same way)."""
    return min(max(px, 0.0), WORLD_SIZE), min(max(py, 0.0), WORLD_SIZE)


def approach_path(
    p0: Point,
    entry: Point,
    pose: tuple[float, float, float],
    cog: Point,
    radius: float,
    need: float,
    arc_step: float = 20.0,
) -> list[Point]:
    """A collision-free polyline from ``p0`` to ``entry`` around the block.

    The safe route leaves radially to ``radius`` px from the centre of gravity ``cog``, follows the circle
    the shorter way round and goes straight to ``entry``; then greedy shortcuts drop every vertex that a
    straight segment keeping ``need`` px of clearance can skip.
    """
    gx, gy = cog
    route = [p0]
    dx, dy = p0[0] - gx, p0[1] - gy
    dist = math.hypot(dx, dy)
    a0 = math.atan2(dy, dx) if dist > 1e-9 else 0.0
    if dist < radius:
        route.append(clip_point(gx + radius * math.cos(a0), gy + radius * math.sin(a0)))
    a1 = math.atan2(entry[1] - gy, entry[0] - gx)
    da = (a1 - a0 + math.pi) % (2 * math.pi) - math.pi
    n_arc = math.ceil(abs(da) * radius / arc_step)
    for k in range(1, n_arc + 1):
        a = a0 + da * k / n_arc
        route.append(clip_point(gx + radius * math.cos(a), gy + radius * math.sin(a)))
    route.append(entry)
    path = [p0]
    i = 0
    last = len(route) - 1
    while i < last:
        j = last
        while j > i + 1 and not segment_clear(route[i], route[j], pose, need):
            j -= 1
        path.append(route[j])
        i = j
    return path


def profile(points: list[Point], v_max: float, accel: float, v_start: float, v_end: float) -> list[Point]:
    """Targets moving along the polyline ``points`` (excluding its start) at a ramped speed.

    Speed (px/step) starts near ``v_start``, rises by at most ``accel`` per step to ``v_max`` and falls so
    it is about ``v_end`` at the end and slow at sharp corners (``v_max * (1 + cos turn) / 2``, so a
    reversal stops first); the last target is the polyline's end. Targets are clipped to the workspace
    and quantised to 1/256 px.
    """
    seg_len = [math.hypot(b[0] - a[0], b[1] - a[1]) for a, b in zip(points, points[1:], strict=False)]
    total = sum(seg_len)
    out: list[Point] = []
    if total < 1e-9:
        return out
    # speed caps (arc length, speed) at the interior vertices and at the end
    caps: list[tuple[float, float]] = []
    s_vertex = 0.0
    for i in range(len(seg_len) - 1):
        s_vertex += seg_len[i]
        if seg_len[i] < 1e-9 or seg_len[i + 1] < 1e-9:
            continue
        (ax, ay), (bx, by), (cx, cy) = points[i], points[i + 1], points[i + 2]
        cos_turn = ((bx - ax) * (cx - bx) + (by - ay) * (cy - by)) / (seg_len[i] * seg_len[i + 1])
        caps.append((s_vertex, v_max * max(0.0, 0.5 * (1.0 + cos_turn))))
    caps.append((total, v_end))
    s, v, seg, seg_start = 0.0, v_start, 0, 0.0
    while True:
        v = min(v_max, v + accel)
        for s_cap, v_cap in caps:
            if s_cap > s:
                v = min(v, math.sqrt(v_cap * v_cap + 2.0 * accel * (s_cap - s)))
        v = max(v, min(1.0, v_max))
        s += v
        if s >= total - 1e-6:
            out.append(quantise(*points[-1]))
            return out
        while seg < len(seg_len) - 1 and seg_start + seg_len[seg] < s:
            seg_start += seg_len[seg]
            seg += 1
        u = (s - seg_start) / seg_len[seg]
        a, b = points[seg], points[seg + 1]
        out.append(quantise(a[0] + (b[0] - a[0]) * u, a[1] + (b[1] - a[1]) * u))


def quantise(px: float, py: float) -> Point:
    """Clip to the workspace and round to 1/256 px (exactly representable in float32)."""
    px, py = clip_point(px, py)
    return round(px * _QUANTUM) / _QUANTUM, round(py * _QUANTUM) / _QUANTUM
