"""Checks of a simulated drive: collisions of the ego and red lights it ran."""

from __future__ import annotations

import numpy as np

from driving.vehicle import HALF_LENGTH, VEHICLE_SIZE
from scenes.procedural.routes import PEDESTRIAN_SIZE
from scenes.procedural.signals import light_state
from scenes.procedural.world import DriveLog


def _corners(x: float, y: float, yaw: float, length: float, width: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    local = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]]) * (length / 2, width / 2)
    return local @ np.array([[c, s], [-s, c]]) + (x, y)


def boxes_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test of two convex quadrilaterals (4, 2)."""
    for poly in (a, b):
        for i in range(4):
            edge = poly[(i + 1) % 4] - poly[i]
            axis = np.array([-edge[1], edge[0]])
            pa, pb = a @ axis, b @ axis
            if pa.max() < pb.min() or pb.max() < pa.min():
                return False
    return True


def collisions(log: DriveLog) -> list[tuple[int, str, int]]:
    """(frame, 'vehicle' | 'pedestrian', index) for every recorded frame where the ego overlaps."""
    hits = []
    for i, f in enumerate(log.frames):
        ego = _corners(f.ego[0], f.ego[1], f.ego[2], VEHICLE_SIZE[0], VEHICLE_SIZE[1])
        for kind, arr, size in (
            ("vehicle", f.vehicles, VEHICLE_SIZE),
            ("pedestrian", f.pedestrians, PEDESTRIAN_SIZE),
        ):
            if not len(arr):
                continue
            near = np.flatnonzero(np.hypot(arr[:, 0] - f.ego[0], arr[:, 1] - f.ego[1]) < 6.0)
            for j in near:
                if boxes_overlap(ego, _corners(arr[j, 0], arr[j, 1], arr[j, 2], size[0], size[1])):
                    hits.append((i, kind, int(j)))
    return hits


def red_light_violations(log: DriveLog) -> list[tuple[int, tuple[int, int]]]:
    """(frame, junction) for every stop line the ego's front crossed while its light was red."""
    out = []
    frames = log.frames
    for m in log.route.maneuvers:
        if not log.town.has_light(m.node):
            continue
        for i in range(1, len(frames)):
            before, after = frames[i - 1].ego_s + HALF_LENGTH, frames[i].ego_s + HALF_LENGTH
            if before < m.s_stop <= after:
                if light_state(log.town, m.node, m.k_in, frames[i - 1].t) == "red":
                    out.append((i, m.node))
                break
    return out
