"""Ego motion per autoregressive step, from the predicted waypoints and from the video itself.

Waypoints of a step are in the ego frame at the step's start (x forward, y left; t+0.2 .. 0.8 s).
The heading change over a step is the direction of the last waypoint segment (left positive); a
step whose last segment is shorter than :data:`MIN_SEGMENT_M` (ego nearly stopped) has none.
Chaining the steps gives the trajectory: its total heading change and final lateral offset.

The video yaw of a step is measured on the front camera: a pure yaw rotation shifts distant scene
content sideways by ``f * dyaw`` pixels, so the global horizontal shift between consecutive frames
(``cv2.phaseCorrelate``) divided by the focal length ``f = (W / 2) / tan(FOV / 2)`` estimates the
yaw change. On recorded procedural drives with turns, this estimate correlates with the yaw of the
recorded waypoints per 8-frame step at r = 0.99 (128 px), 0.97 (64 px) and 0.90 (32 px, after
H.264), slope ~1; so its correlation with the predicted yaw measures whether the generated video
moves the way the predicted action says, and the recorded drive gives the estimator's ceiling.
Summed over the horizon, the video yaw is the heading change the video shows, classified like the
plan's (:func:`turn_of`) but without a lateral offset to check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from schemas.scene import CAMERA_FOV_DEG

# Not the thresholds of driving.maneuver.path_maneuver, on purpose: that one classifies one step's
# path as a turn begins (its last segment 4 degrees off straight, moving 0.25 m/s); these measure
# a whole trajectory of steps, whose turns add up to most of 90 degrees, from headings taken only
# where the ego moves at 1 m/s or more.
MIN_SEGMENT_M = 0.2  # 1 m/s over the 0.2 s between waypoints
TURN_DEG = 30.0  # |heading change| at or above this is a turn; below it the ego went straight


def step_yaw(waypoints: np.ndarray) -> np.ndarray:
    """Heading change (radians, left positive) of each step from its waypoints (steps, K, 2)."""
    seg = np.asarray(waypoints, np.float64)[:, -1] - np.asarray(waypoints, np.float64)[:, -2]
    moving = np.hypot(seg[:, 0], seg[:, 1]) >= MIN_SEGMENT_M
    return np.where(moving, np.arctan2(seg[:, 1], seg[:, 0]), 0.0)


@dataclass(frozen=True)
class Trajectory:
    heading_deg: float  # total heading change, left positive
    lateral_m: float  # final position's offset to the left of the start heading

    def maneuver(self) -> str:
        """'left', 'right', 'straight', or 'unclear' (turned but ended on the other side)."""
        turn = turn_of(self.heading_deg)
        if (turn == "left" and self.lateral_m <= 0) or (turn == "right" and self.lateral_m >= 0):
            return "unclear"
        return turn


def turn_of(heading_deg: float) -> str:
    """'left' or 'right' for a heading change (left positive) of at least :data:`TURN_DEG`, else
    'straight'."""
    if abs(heading_deg) < TURN_DEG:
        return "straight"
    return "left" if heading_deg > 0 else "right"


def trajectory(waypoints: np.ndarray) -> Trajectory:
    """Chain the steps: each step moves to its last waypoint and turns by :func:`step_yaw`."""
    yaw = step_yaw(waypoints)
    heading, pos = 0.0, np.zeros(2)
    for wp, dyaw in zip(np.asarray(waypoints, np.float64), yaw, strict=True):
        c, s = math.cos(heading), math.sin(heading)
        pos += np.array([c * wp[-1, 0] - s * wp[-1, 1], s * wp[-1, 0] + c * wp[-1, 1]])
        heading += dyaw
    return Trajectory(math.degrees(heading), float(pos[1]))


def video_yaw(front: np.ndarray, step_frames: int) -> np.ndarray:
    """Yaw change (radians, left positive) per step from front-camera frames
    (1 + steps * step_frames, H, W, 3): the frame before the first step, then the step frames."""
    h, w = front.shape[1:3]
    focal = (w / 2) / math.tan(math.radians(CAMERA_FOV_DEG / 2))
    window = cv2.createHanningWindow((w, h), cv2.CV_64F)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float64) for f in front]
    shifts = np.array(
        [cv2.phaseCorrelate(a, b, window)[0][0] for a, b in zip(gray[:-1], gray[1:], strict=True)]
    )
    return shifts.reshape(-1, step_frames).sum(axis=1) / focal
