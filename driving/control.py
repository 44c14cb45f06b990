"""LMDrive's PID controllers: waypoints (ego frame) -> throttle / brake / steer.

Constants are LMDrive's (``lmdriver_config.py``, ``pid_controller.py``). LMDrive's waypoints are
0.5 s apart; ours (``WAYPOINT_DT``) are 0.2 s apart, so the desired speed is the first waypoint
gap divided by that spacing, and the steering aim point is taken at about the same look-ahead time
LMDrive uses (the mean of the third and fourth waypoints, 0.7 s).

``max_speed`` caps the desired speed, as InterFuser's controller does (``max_speed`` 5 m/s in its
``interfuser_config.py``; LMDrive's has no cap): a planner asked past the fastest speed it was
trained on extrapolates its speed input, and the controller's dead band (no brake until 1.1x the
desired speed, full throttle 0.15 m/s below it) turns a small over-estimate into a runaway.

Steer follows CARLA's sign: positive steers right. Waypoints are in the ego frame (x forward,
y left).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

WAYPOINT_DT = 0.2


class PIDController:
    """``K_P·e + K_I·mean(last n errors) + K_D·(e_t − e_{t−1})``, as in LMDrive."""

    def __init__(self, k_p: float, k_i: float, k_d: float, n: int = 40):
        self.k_p, self.k_i, self.k_d = k_p, k_i, k_d
        self._window: deque[float] = deque([0.0] * n, maxlen=n)

    def step(self, error: float) -> float:
        self._window.append(error)
        integral = float(np.mean(self._window))
        derivative = self._window[-1] - self._window[-2]
        return self.k_p * error + self.k_i * integral + self.k_d * derivative


@dataclass(frozen=True)
class Control:
    throttle: float
    brake: float
    steer: float


class WaypointController:
    """Turns ego-frame waypoints and the current speed into a :class:`Control` (LMDrive logic)."""

    max_throttle = 0.75
    brake_speed = 0.1
    brake_ratio = 1.1
    clip_delta = 0.35

    def __init__(self, max_speed: float = np.inf) -> None:
        self.max_speed = max_speed
        self.turn = PIDController(1.25, 0.75, 0.3, 40)
        self.speed = PIDController(5.0, 0.5, 1.0, 40)

    def step(self, waypoints: np.ndarray, speed: float) -> Control:
        """The control for ``waypoints`` (K, 2) at ``speed`` m/s."""
        return self.control(waypoints, speed, self.max_speed)

    def control(self, waypoints: np.ndarray, speed: float, max_speed: float) -> Control:
        """:meth:`step` with the desired speed capped at ``max_speed`` for this step."""
        wp = np.asarray(waypoints, dtype=np.float64)
        desired_speed = min(float(np.linalg.norm(wp[1] - wp[0])) / WAYPOINT_DT, max_speed)
        brake = (
            desired_speed < self.brake_speed
            or (speed / max(desired_speed, 1e-6)) > self.brake_ratio
        )

        aim = (wp[2] + wp[3]) / 2.0
        # LMDrive: degrees(pi/2 - atan2(aim_y, aim_x)) / 90 in a frame with y forward, x right;
        # in our frame (x forward, y left) that is the angle to the right of straight ahead.
        angle = float(np.degrees(np.arctan2(-aim[1], aim[0])) / 90.0)
        if speed < 0.01:
            angle = 0.0
        steer = float(np.clip(self.turn.step(angle), -1.0, 1.0))

        delta = float(np.clip(desired_speed - speed, 0.0, self.clip_delta))
        throttle = float(np.clip(self.speed.step(delta), 0.0, self.max_throttle))
        brake_value = 1.0 if brake else 0.0
        if brake_value > 0.1:
            throttle = 0.0
        return Control(throttle=throttle, brake=brake_value, steer=steer * 0.8)
