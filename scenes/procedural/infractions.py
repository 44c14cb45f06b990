"""What the leaderboard would see in a drive of the procedural world: collisions of the ego with
vehicles, pedestrians and static objects, red lights it ran, the share driven outside its lanes,
and the route's early ends (straying from the route, standing still too long, running out of
time), as :class:`driving.leaderboard.Event` for :func:`driving.leaderboard.score_route`."""

from __future__ import annotations

import numpy as np

from driving.leaderboard import (
    BLOCKED_SECONDS,
    BLOCKED_SPEED,
    ROUTE_TOLERANCE_M,
    Event,
)
from driving.vehicle import HALF_LENGTH, VEHICLE_SIZE
from scenes.procedural.geometry import Polyline
from scenes.procedural.props import Boxes
from scenes.procedural.routes import PEDESTRIAN_SIZE
from scenes.procedural.signals import light_state
from scenes.procedural.town import LANE_OFFSET
from scenes.procedural.world import DriveLog, FrameState

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
                    x, y = (float(v) for v in frames[i].ego[:2])
                    out.append(Event("red_light", frames[i].t, str(m.node), x, y))
                break
    return out


class RouteMonitor:
    """The leaderboard's early ends of a route, checked frame by frame as it is driven: the ego
    farther than the route tolerance from its route (``route_deviation``), below the blocked speed
    for ``blocked_s`` (``agent_blocked``), past ``timeout_s`` (``route_timeout``)."""

    def __init__(self, path: Polyline, timeout_s: float, blocked_s: float = BLOCKED_SECONDS):
        self.path, self.timeout_s, self.blocked_s = path, timeout_s, blocked_s
        self.still_since: float | None = None

    def update(self, f: FrameState) -> Event | None:
        """The termination frame ``f`` brings, or None."""
        if np.linalg.norm(self.path.point(f.ego_s) - f.ego[:2]) > ROUTE_TOLERANCE_M:
            return Event("route_deviation", f.t, x=float(f.ego[0]), y=float(f.ego[1]))
        if f.ego[3] >= BLOCKED_SPEED:
            self.still_since = None
        elif self.still_since is None:
            self.still_since = f.t
        if self.still_since is not None and f.t - self.still_since >= self.blocked_s:
            return Event("agent_blocked", f.t, x=float(f.ego[0]), y=float(f.ego[1]))
        if f.t > self.timeout_s:
            return Event("route_timeout", f.t, x=float(f.ego[0]), y=float(f.ego[1]))
        return None


def route_ends(log: DriveLog, timeout_s: float, blocked_s: float = BLOCKED_SECONDS) -> list[Event]:
    """The first termination of a drive (see :class:`RouteMonitor`); empty when none happened."""
    monitor = RouteMonitor(log.route.path, timeout_s, blocked_s)
    for f in log.frames:
        end = monitor.update(f)
        if end is not None:
            return [end]
    return []


def static_collisions(log: DriveLog, boxes: Boxes) -> list[Event]:
    """A ``collision_static`` event for every recorded frame where the ego's box overlaps a
    building, a tree trunk or a signal pole (``boxes``: the town's static props; what hangs above
    the car, such as mast arms, is left out)."""
    ground = np.flatnonzero(boxes.z0 < 1.0)
    reach = np.hypot(boxes.hx[ground], boxes.hy[ground]) + VEHICLE_SIZE[0]
    hits = []
    for f in log.frames:
        x, y = f.ego[0], f.ego[1]
        near = ground[np.hypot(boxes.cx[ground] - x, boxes.cy[ground] - y) < reach]
        if not len(near):
            continue
        ego = corners(x, y, f.ego[2], VEHICLE_SIZE[0], VEHICLE_SIZE[1])
        for j in near:
            other = corners(
                boxes.cx[j], boxes.cy[j], boxes.yaw[j], 2 * boxes.hx[j], 2 * boxes.hy[j]
            )
            if boxes_overlap(ego, other):
                hits.append(Event("collision_static", f.t, f"static{j}", float(x), float(y)))
    return hits


def outside_lanes_percent(log: DriveLog, route_length_m: float) -> float:
    """Percent of the route's length the ego drove with its centre outside its lane (in the lane
    of the other direction or off the road), junction boxes not counted, as the leaderboard's
    OutsideRouteLanesTest measures it."""
    town, path = log.town, log.route.path
    outside = 0.0
    for a, b in zip(log.frames, log.frames[1:], strict=False):
        x, y = b.ego[0], b.ego[1]
        in_box = town.in_junction_box(x, y)
        if not in_box and np.linalg.norm(path.point(b.ego_s) - (x, y)) > LANE_OFFSET:
            outside += float(np.hypot(x - a.ego[0], y - a.ego[1]))
    return min(100.0, 100.0 * outside / max(route_length_m, 1e-9))
