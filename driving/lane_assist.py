"""Lane assist: the planner's waypoints pulled towards the lane centre, given where the car stands
in its lane.

In closed loop our planner drifts off the lane centre on straight road while it plans "straight
ahead": neither its tokens nor its vision encoder's carry the car's offset from the lane centre or
its heading error (``bench/lane_probe.py``), so nothing in it can steer back, and the drift grows
into early turns and loops. :func:`assist` adds to each waypoint a share (``gain``) of the lane
centre's lateral position at that distance ahead, seen from the car, as a lane-keeping assist
adds its correction to the driver's steering. A plan that bends by more than ``gate`` metres at
its last waypoint is a turn (in a junction there is no lane to keep) and is left as it is.

:class:`LaneAssistController` applies it before LMDrive's PID controllers; :attr:`lane_pose` is set
each frame by whoever knows it: the model's own lane reader (agent ``model_lane_assist``) or the
car's true pose (the privileged diagnostic agent ``model_lane_oracle``, :mod:`closedloop.agents`).
"""

from __future__ import annotations

import numpy as np

from driving.control import Control, WaypointController

GAIN = 1.0  # share of the way to the lane centre added to each waypoint
GATE_M = 0.6  # a plan whose last waypoint is this far to a side is a turn: no assist


def lane_centre_y(x: np.ndarray, lateral: float, heading: float) -> np.ndarray:
    """The lane centre's lateral position (ego frame, y left) at ``x`` metres ahead, for a car
    ``lateral`` metres left of it with its heading ``heading`` radians left of the lane's."""
    return -np.asarray(x) * np.tan(heading) - lateral / np.cos(heading)


def assist(
    waypoints: np.ndarray, lateral: float, heading: float, gain: float = GAIN, gate: float = GATE_M
) -> np.ndarray:
    """``waypoints`` (K, 2, ego frame: x forward, y left) moved ``gain`` of the way towards the
    lane centre, unless the plan turns (its last waypoint more than ``gate`` m to a side)."""
    wp = np.array(waypoints, dtype=np.float64)
    if abs(wp[-1, 1]) > gate:
        return wp.astype(np.float32)
    wp[:, 1] += gain * lane_centre_y(wp[:, 0], lateral, heading)
    return wp.astype(np.float32)


class LaneAssistController(WaypointController):
    """LMDrive's :class:`WaypointController` on the waypoints :func:`assist` corrects; set
    :attr:`lane_pose` (lateral m, heading rad) before each :meth:`step`, None for no assist."""

    def __init__(self, max_speed: float = np.inf):
        super().__init__(max_speed)
        self.lane_pose: tuple[float, float] | None = None

    def step(self, waypoints: np.ndarray, speed: float) -> Control:
        if self.lane_pose is not None:
            waypoints = assist(waypoints, *self.lane_pose)
        return super().step(waypoints, speed)
