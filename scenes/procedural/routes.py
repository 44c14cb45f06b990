"""Routes through the lane graph, and what lies ahead on them (stop lines, obstacles)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from scenes.procedural.geometry import Polyline
from scenes.procedural.town import BOX, STOP_LINE, Town

PEDESTRIAN_SIZE = (0.5, 0.5, 1.75)


@dataclass(frozen=True)
class Maneuver:
    """Passing one junction: where the route enters and leaves its box."""

    node: tuple[int, int]
    k_in: int
    k_out: int
    s_stop: float  # arc length of the stop line on the approach
    s_entry: float  # arc length where the junction box begins
    s_exit: float  # arc length where the junction box ends


TurnChooser = Callable[[tuple[int, int], int, list[int]], int]


class Route:
    """A vehicle's path: lanes and junction connectors, extended on demand by ``choose``."""

    def __init__(self, town: Town, node: tuple[int, int], k: int, choose: TurnChooser):
        self.town, self.choose = town, choose
        self.path = Polyline(town.lane(node, k))
        self.maneuvers: list[Maneuver] = []
        self._kappa = _curvature(self.path.points)
        self._end_node = town.neighbour(node, k)
        self._end_k = k

    def ensure(self, s: float, ahead: float = 90.0) -> None:
        """Extend the route so it reaches at least ``ahead`` metres past ``s``."""
        while self.path.length < s + ahead:
            node, k_in = self._end_node, self._end_k
            options = self.town.exits(node, k_in)
            k_out = self.choose(node, k_in, options)
            s_entry = self.path.length
            self.path.extend(self.town.connector(node, k_in, k_out))
            s_exit = self.path.length
            self.maneuvers.append(
                Maneuver(node, k_in, k_out, s_entry - (STOP_LINE - BOX), s_entry, s_exit)
            )
            self.path.extend(self.town.lane(node, k_out))
            self._end_node, self._end_k = self.town.neighbour(node, k_out), k_out
        if len(self._kappa) != len(self.path.points):
            self._kappa = _curvature(self.path.points)

    def curve_speed_limit(
        self, s: float, a_lat: float = 2.0, b: float = 2.0, ahead: float = 30.0
    ) -> float:
        """Highest speed at ``s`` from which every curve within ``ahead`` metres can be taken with
        lateral acceleration ``a_lat``, braking at ``b``."""
        lo, hi = np.searchsorted(self.path.s, [s, s + ahead])
        k = self._kappa[lo:hi]
        if len(k) == 0:
            return np.inf
        v_curve_sq = a_lat / np.maximum(k, 1e-6)
        dist = np.maximum(self.path.s[lo:hi] - s, 0.0)
        return float(np.sqrt(np.min(v_curve_sq + 2.0 * b * dist)))

    def next_maneuver(self, s_front: float) -> Maneuver | None:
        """The first junction whose box the front has not yet left."""
        for m in self.maneuvers:
            if s_front < m.s_exit:
                return m
        return None


def first_obstacle(
    path: Polyline,
    s_front: float,
    lookahead: float,
    positions: np.ndarray,
    velocities: np.ndarray,
    half_lengths: np.ndarray,
    lateral: np.ndarray,
) -> tuple[float, float, int]:
    """Gap (m) to the nearest agent within ``lateral`` of the path ahead, its speed along the
    path, and its index; ``(inf, 0, -1)`` when the way is clear."""
    if len(positions) == 0:
        return np.inf, 0.0, -1
    ds = np.arange(0.0, lookahead + 0.5, 0.5)
    # every point ahead lies within its arc length of the front's: agents farther than that
    # (and their lateral reach, with a metre to spare) cannot be on the way
    reach = np.hypot(*(positions - path.point(s_front)).T) - lateral
    if not (reach < ds[-1] + 1.0).any():
        return np.inf, 0.0, -1
    idx = np.arange(len(positions))
    pts = path.at(s_front + ds)
    d = np.linalg.norm(positions[idx, None, :] - pts[None], axis=2)
    inside = d < lateral[idx, None]
    hit = inside.any(axis=1)
    if not hit.any():
        return np.inf, 0.0, -1
    first = np.where(hit, inside.argmax(axis=1), len(ds))
    gaps = ds[np.minimum(first, len(ds) - 1)] - half_lengths[idx]
    gaps[~hit] = np.inf
    j = int(np.argmin(gaps))
    k = int(first[j])
    tangent = pts[min(k + 1, len(ds) - 1)] - pts[max(k - 1, 0)]
    tangent = tangent / max(np.linalg.norm(tangent), 1e-9)
    return float(gaps[j]), float(velocities[idx[j]] @ tangent), int(idx[j])


def idm_acceleration(
    v: float,
    v0: float,
    gap: float,
    v_lead: float,
    s0: float = 2.5,
    headway: float = 1.2,
    a_max: float = 2.0,
    b: float = 3.0,
) -> float:
    """Intelligent Driver Model acceleration (Treiber et al.), clamped to [-9, a_max]."""
    free = 1.0 - (v / max(v0, 0.1)) ** 4
    if not math.isfinite(gap):
        return float(min(max(a_max * free, -9.0), a_max))
    s_star = s0 + max(0.0, v * headway + v * (v - v_lead) / (2.0 * math.sqrt(a_max * b)))
    a = a_max * (free - (s_star / max(gap, 0.05)) ** 2)
    return float(min(max(a, -9.0), a_max))


def _curvature(points: np.ndarray) -> np.ndarray:
    """Absolute curvature at every point of a polyline (1/m), smoothed over neighbours."""
    seg = np.diff(points, axis=0)
    h = np.arctan2(seg[:, 1], seg[:, 0])
    dh = np.abs((np.diff(h) + np.pi) % (2 * np.pi) - np.pi)
    length = np.linalg.norm(seg, axis=1)
    k = dh / np.maximum((length[1:] + length[:-1]) / 2, 1e-6)
    k = np.concatenate([[0.0], k, [0.0]])
    return np.convolve(k, np.ones(3) / 3, mode="same")
