"""Polylines with arc length: the shape of every lane, turn and route in the procedural world."""

from __future__ import annotations

import numpy as np

DIRECTIONS = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # E, N, W, S (CCW)


def right_of(d: np.ndarray) -> np.ndarray:
    """The unit vector 90° clockwise of ``d``."""
    return np.array([d[1], -d[0]])


def rotation(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


def to_ego(points: np.ndarray, x: float, y: float, theta: float) -> np.ndarray:
    """World points (N, 2) -> ego frame (x forward, y left) of a pose."""
    return (np.asarray(points, dtype=np.float64) - (x, y)) @ rotation(theta)


def line(a: np.ndarray, b: np.ndarray, step: float = 0.5) -> np.ndarray:
    n = max(2, int(np.ceil(np.linalg.norm(b - a) / step)) + 1)
    t = np.linspace(0.0, 1.0, n)[:, None]
    return a[None] * (1 - t) + b[None] * t


def arc(
    center: np.ndarray, start: np.ndarray, end: np.ndarray, ccw: bool, step: float = 0.5
) -> np.ndarray:
    """Circular arc around ``center`` from ``start`` to ``end`` turning CCW or CW (< 180°)."""
    r = float(np.linalg.norm(start - center))
    a0 = np.arctan2(*(start - center)[::-1])
    a1 = np.arctan2(*(end - center)[::-1])
    sweep = (a1 - a0) % (2 * np.pi)
    if not ccw:
        sweep -= 2 * np.pi
    n = max(3, int(np.ceil(abs(sweep) * r / step)) + 1)
    a = a0 + np.linspace(0.0, sweep, n)
    return center[None] + r * np.stack([np.cos(a), np.sin(a)], axis=1)


class Polyline:
    """A growable polyline with cumulative arc length ``s``."""

    def __init__(self, points: np.ndarray):
        self.points = np.asarray(points, dtype=np.float64)
        self.s = _cumulative(self.points)

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def extend(self, points: np.ndarray) -> None:
        pts = np.asarray(points, dtype=np.float64)
        if np.linalg.norm(pts[0] - self.points[-1]) < 1e-6:
            pts = pts[1:]
        seg = _cumulative(np.concatenate([self.points[-1:], pts]))[1:] + self.s[-1]
        self.points = np.concatenate([self.points, pts])
        self.s = np.concatenate([self.s, seg])

    def at(self, s: np.ndarray | float) -> np.ndarray:
        """Positions at arc lengths ``s`` (clamped to the ends)."""
        s_arr = np.clip(np.asarray(s, dtype=np.float64), 0.0, self.s[-1])
        x = np.interp(s_arr, self.s, self.points[:, 0])
        y = np.interp(s_arr, self.s, self.points[:, 1])
        return np.stack([x, y], axis=-1)

    def point(self, s: float) -> np.ndarray:
        """Position at one arc length (a faster :meth:`at` for scalars)."""
        i = self._segment(s)
        s0, s1 = self.s[i], self.s[i + 1]
        t = min(max((s - s0) / max(s1 - s0, 1e-12), 0.0), 1.0)
        return self.points[i] + (self.points[i + 1] - self.points[i]) * t

    def heading(self, s: float) -> float:
        """Direction of travel (radians, CCW from +x) at arc length ``s``."""
        i = self._segment(s)
        d = self.points[i + 1] - self.points[i]
        return float(np.arctan2(d[1], d[0]))

    def lane_pose(self, s: float, x: float, y: float, theta: float) -> tuple[float, float]:
        """Where a car at (``x``, ``y``) heading ``theta`` stands against this line at arc length
        ``s``: its lateral offset (metres, left of the line positive) and heading error (radians
        in [-pi, pi), turned left of the line's direction positive)."""
        px, py = self.point(s)
        h = self.heading(s)
        lateral = -(x - px) * np.sin(h) + (y - py) * np.cos(h)
        error = (theta - h + np.pi) % (2.0 * np.pi) - np.pi
        return float(lateral), float(error)

    def _segment(self, s: float) -> int:
        return int(min(max(np.searchsorted(self.s, s, side="right") - 1, 0), len(self.s) - 2))

    def project(self, p: np.ndarray, s_hint: float, window: float = 10.0) -> float:
        """Arc length of the closest point to ``p`` within ``window`` of ``s_hint``."""
        lo = np.searchsorted(self.s, s_hint - window)
        hi = min(len(self.s), np.searchsorted(self.s, s_hint + window) + 1)
        lo = min(lo, hi - 2)
        a, b = self.points[lo : hi - 1], self.points[lo + 1 : hi]
        ab = b - a
        t = np.clip(
            np.einsum("ij,ij->i", p - a, ab) / np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-12),
            0,
            1,
        )
        d = np.linalg.norm(a + ab * t[:, None] - p, axis=1)
        k = int(np.argmin(d))
        return float(self.s[lo + k] + t[k] * np.linalg.norm(ab[k]))


def _cumulative(points: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
