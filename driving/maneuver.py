"""The maneuver of a planned path: which way its waypoints head at their end.

The planner's training batches are balanced by it (:mod:`lmgendrive.train.data`) and the quality
bench scores turn agreement with it (``bench/quality.py``).
"""

from __future__ import annotations

import numpy as np

TURN_DEGREES = 4.0  # a path whose last segment heads more than this off straight turns
STANDING_M = 0.05  # a last segment shorter than this has no heading: the car stands


def path_maneuver(waypoints: np.ndarray) -> str:
    """ "left", "straight" or "right": the heading of the last segment of ego-frame ``waypoints``
    (x forward, y left) against ``TURN_DEGREES``; a standing car goes straight."""
    last = np.asarray(waypoints[-1], dtype=np.float64)
    dx, dy = last - np.asarray(waypoints[-2], dtype=np.float64)
    if np.hypot(dx, dy) < STANDING_M:
        return "straight"
    heading = np.degrees(np.arctan2(dy, dx))
    return "left" if heading > TURN_DEGREES else "right" if heading < -TURN_DEGREES else "straight"
