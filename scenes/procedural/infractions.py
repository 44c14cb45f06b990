"""What the leaderboard would see in a drive of the procedural world: collisions of the ego with
vehicles and pedestrians, red lights it ran, and the route's early ends (straying from the route,
standing still too long, running out of time), as :class:`driving.leaderboard.Event` for
:func:`driving.leaderboard.score_route`."""

from __future__ import annotations

import numpy as np

from driving.leaderboard import (
    BLOCKED_SECONDS,
    BLOCKED_SPEED,
    ROUTE_TOLERANCE_M,
    Event,
)
from driving.vehicle import HALF_LENGTH, VEHICLE_SIZE
from scenes.procedural.routes import PEDESTRIAN_SIZE
from scenes.procedural.signals import light_state
from scenes.procedural.world import DriveLog

NEAR_M = 6.0  # only actors this close are tested for overlap


def corners(x: float, y: float, yaw: float, length: float, width: float) -> np.ndarray:
    """The four corners (4, 2) of a box centred at ``(x, y)`` heading ``yaw``."""
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


def collisions(log: DriveLog) -> list[Event]:
    """A ``collision_vehicle`` / ``collision_pedestrian`` event for every recorded frame where the
    ego's box overlaps another's (``actor``: ``vehicle<j>`` / ``pedestrian<j>``)."""
    hits = []
    for f in log.frames:
        ego = corners(f.ego[0], f.ego[1], f.ego[2], VEHICLE_SIZE[0], VEHICLE_SIZE[1])
        for kind, arr, size in (
            ("vehicle", f.vehicles, VEHICLE_SIZE),
            ("pedestrian", f.pedestrians, PEDESTRIAN_SIZE),
        ):
            if not len(arr):
                continue
            near = np.flatnonzero(np.hypot(arr[:, 0] - f.ego[0], arr[:, 1] - f.ego[1]) < NEAR_M)
            for j in near:
                if boxes_overlap(ego, corners(arr[j, 0], arr[j, 1], arr[j, 2], size[0], size[1])):
                    hits.append(
                        Event(
                            f"collision_{kind}", f.t, f"{kind}{j}", float(f.ego[0]), float(f.ego[1])
                        )
                    )
    return hits


def red_lights(log: DriveLog) -> list[Event]:
    """A ``red_light`` event for every stop line the ego's front crossed while its light was red
    (``actor``: the junction)."""
    out = []
    frames = log.frames
    for m in log.route.maneuvers:
        if not log.town.has_light(m.node):
            continue
        for i in range(1, len(frames)):
            before, after = frames[i - 1].ego_s + HALF_LENGTH, frames[i].ego_s + HALF_LENGTH
            if before < m.s_stop <= after:
                if light_state(log.town, m.node, m.k_in, frames[i - 1].t) == "red":
                    out.append(Event("red_light", frames[i].t, str(m.node)))
                break
    return out


def route_ends(log: DriveLog, timeout_s: float, blocked_s: float = BLOCKED_SECONDS) -> list[Event]:
    """The first of: the ego farther than the route tolerance from its route
    (``route_deviation``), below the blocked speed for ``blocked_s`` (``agent_blocked``), past
    ``timeout_s`` (``route_timeout``); empty when none happened."""
    still_since = None
    path = log.route.path
    for f in log.frames:
        if np.linalg.norm(path.at(f.ego_s) - f.ego[:2]) > ROUTE_TOLERANCE_M:
            return [Event("route_deviation", f.t)]
        still_since = (
            (still_since if still_since is not None else f.t) if f.ego[3] < BLOCKED_SPEED else None
        )
        if still_since is not None and f.t - still_since >= blocked_s:
            return [Event("agent_blocked", f.t)]
        if f.t > timeout_s:
            return [Event("route_timeout", f.t)]
    return []
