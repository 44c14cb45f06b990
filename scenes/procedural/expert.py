"""The ego's expert driver: plans waypoints on its route, drives them with LMDrive's PID controllers
and moves with a kinematic bicycle model."""

from __future__ import annotations

import numpy as np

from driving.control import Control, WaypointController
from driving.vehicle import HALF_LENGTH
from scenes.procedural.geometry import to_ego
from scenes.procedural.routes import Route, first_obstacle, idm_acceleration
from scenes.procedural.town import Town
from scenes.procedural.traffic import lookahead, signal_gap
from schemas.scene import WAYPOINT_TIMES

WHEELBASE = 2.9
MAX_WHEEL_ANGLE = np.radians(70.0)
ENGINE_ACCEL, BRAKE_DECEL = 4.0, 6.0
CRUISE_SPEED, SLOW_SPEED = 8.0, 3.5
ROLLING, DRAG = 0.1, 0.004  # m/s² of rolling resistance when moving, and per (m/s)² of air drag


def steady_throttle(v: float) -> float:
    """The throttle that holds ``v`` m/s against rolling and air resistance."""
    return (ROLLING * (v > 0) + DRAG * v * v) / ENGINE_ACCEL


class Expert:
    """Rule-based driver of the ego vehicle."""

    def __init__(self, town: Town, route: Route, s: float, speed: float):
        self.town, self.route = town, route
        route.ensure(s)
        self.x, self.y = (float(v) for v in route.path.at(s))
        self.theta = route.path.heading(s)
        self.v = speed
        self.s = s
        self.controller = WaypointController()
        self.control = Control(0.0, 0.0, 0.0)
        self.slow = False
        self.halt_at: float | None = None  # arc length where a "halt" instruction makes it stop

    @property
    def xy(self) -> np.ndarray:
        return np.array([self.x, self.y])

    def halt(self) -> None:
        """Come to a stop as soon as comfortably possible and stay until :meth:`resume`."""
        self.halt_at = self.s + HALF_LENGTH + self.v * self.v / 5.0 + 1.0

    def resume(self) -> None:
        self.halt_at = None

    def planned_speed(self, t: float, agents: dict) -> tuple[float, float]:
        """Speed the plan asks for, and the free distance ahead before it must stop."""
        s_front = self.s + HALF_LENGTH
        gap, v_lead, _ = first_obstacle(self.route.path, s_front, lookahead(self.v), **agents)
        v0 = min(SLOW_SPEED if self.slow else CRUISE_SPEED, self.route.curve_speed_limit(self.s))
        a = idm_acceleration(self.v, v0, gap, v_lead)
        room = gap - 2.5
        for stop in (
            signal_gap(self.town, self.route, s_front, self.v, t, gap, v_lead),
            (self.halt_at - s_front) if self.halt_at is not None else np.inf,
        ):
            if np.isfinite(stop):
                a = min(a, idm_acceleration(self.v, v0, stop, 0.0, s0=0.3))
                room = min(room, stop - 0.3)
        return float(np.clip(self.v + a * 0.6, 0.0, v0)), max(0.0, room)

    def plan(self, t: float, agents: dict) -> np.ndarray:
        """Four ego-frame waypoints at ``WAYPOINT_TIMES`` along the route."""
        self.route.ensure(self.s)
        v_plan, room = self.planned_speed(t, agents)
        d = np.minimum(v_plan * np.asarray(WAYPOINT_TIMES), room)
        d[2] = max(d[2], 3.5)  # the steering aim point needs some look-ahead at low speed
        d[3] = max(d[3], 5.0)
        if room <= 0.0 or v_plan <= 0.0:
            d[:2] = 0.0
        return to_ego(self.route.path.at(self.s + d), self.x, self.y, self.theta)

    def step(
        self,
        dt: float,
        t: float,
        agents: dict,
        waypoints: np.ndarray | None = None,
        control: Control | None = None,
    ) -> None:
        """Plan (or take ``waypoints``, ego frame, from an agent), control (or take an agent's
        ``control``) and move one tick."""
        self.route.ensure(self.s)
        if control is not None:
            self.control = control
        else:
            plan = self.plan(t, agents) if waypoints is None else waypoints
            self.control = self.controller.step(plan, self.v)
        c = self.control
        accel = (
            ENGINE_ACCEL * c.throttle
            - BRAKE_DECEL * c.brake
            - ROLLING * (self.v > 0)
            - DRAG * self.v**2
        )
        delta = -c.steer * MAX_WHEEL_ANGLE  # CARLA: positive steer turns right (clockwise)
        beta = np.arctan(0.5 * np.tan(delta))
        self.x += self.v * np.cos(self.theta + beta) * dt
        self.y += self.v * np.sin(self.theta + beta) * dt
        self.theta = float(
            (self.theta + self.v / WHEELBASE * np.cos(beta) * np.tan(delta) * dt + np.pi)
            % (2 * np.pi)
            - np.pi
        )
        self.v = max(0.0, self.v + accel * dt)
        self.s = self.route.path.project(self.xy, self.s)
