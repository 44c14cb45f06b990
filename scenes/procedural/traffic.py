"""Other vehicles: lane followers that turn at random, queue, obey signals and yield."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from driving.vehicle import HALF_LENGTH
from scenes.procedural.routes import Route, first_obstacle, idm_acceleration
from scenes.procedural.signals import light_state
from scenes.procedural.town import Town

CAR_COLORS = [
    (200, 30, 30),
    (235, 235, 235),
    (25, 25, 28),
    (60, 90, 170),
    (150, 152, 158),
    (200, 170, 40),
    (40, 110, 70),
    (110, 30, 40),
    (90, 90, 96),
    (210, 110, 30),
]


def signal_gap(
    town: Town,
    route: Route,
    s_front: float,
    v: float,
    t: float,
    obstacle_gap: float,
    obstacle_speed: float,
) -> float:
    """Distance to the stop line if the vehicle must stop there now, else ``inf``.

    Stop on red; on yellow when a comfortable stop (<= 3.5 m/s²) is possible; and on green when
    the exit is blocked by a queue (never stop inside a junction box).
    """
    m = route.next_maneuver(s_front)
    if m is None or not town.has_light(m.node) or s_front > m.s_stop + 0.5:
        return np.inf
    gap = m.s_stop - s_front
    state = light_state(town, m.node, m.k_in, t)
    if state == "red":
        return gap
    if state == "yellow" and v * v / (2.0 * max(gap, 0.1)) < 3.5:
        return gap
    if obstacle_gap < m.s_exit + HALF_LENGTH * 2 + 3.0 - s_front and obstacle_speed < 1.0:
        return gap
    return np.inf


def lookahead(v: float) -> float:
    return float(min(45.0, max(15.0, v * v / 4.0 + 15.0)))


@dataclass
class Vehicle:
    """A non-ego vehicle moving along its route at arc length ``s`` (its centre)."""

    route: Route
    s: float
    v: float
    v0: float
    color: tuple[int, int, int]

    @property
    def xy(self) -> np.ndarray:
        return self.route.path.point(self.s)

    @property
    def yaw(self) -> float:
        return self.route.path.heading(self.s)

    def acceleration(self, town: Town, t: float, agents: dict) -> float:
        """IDM acceleration given every other agent (``agents`` from :func:`agent_arrays`)."""
        s_front = self.s + HALF_LENGTH
        self.route.ensure(self.s)
        gap, v_lead, _ = first_obstacle(self.route.path, s_front, lookahead(self.v), **agents)
        v0 = min(self.v0, self.route.curve_speed_limit(self.s))
        a = idm_acceleration(self.v, v0, gap, v_lead)
        stop = signal_gap(town, self.route, s_front, self.v, t, gap, v_lead)
        if np.isfinite(stop):
            a = min(a, idm_acceleration(self.v, v0, stop, 0.0, s0=0.5))
        return a


def agent_arrays(
    positions: np.ndarray, velocities: np.ndarray, is_pedestrian: np.ndarray, candidates: np.ndarray
) -> dict:
    """Keyword arguments for :func:`first_obstacle` holding only agents ``candidates``."""
    ped = is_pedestrian[candidates]
    return {
        "positions": positions[candidates],
        "velocities": velocities[candidates],
        "half_lengths": np.where(ped, 0.3, HALF_LENGTH),
        "lateral": np.where(ped, 2.4, 2.1),
    }


def nearby_agents(positions: np.ndarray, speeds: np.ndarray, n_vehicles: int) -> list[np.ndarray]:
    """For each of the first ``n_vehicles`` agents, the other agents close enough to matter."""
    d = np.linalg.norm(positions[:n_vehicles, None, :] - positions[None, :, :], axis=2)
    reach = np.minimum(45.0, np.maximum(15.0, speeds[:n_vehicles] ** 2 / 4.0 + 15.0)) + 5.0
    close = d < reach[:, None]
    close[np.arange(n_vehicles), np.arange(n_vehicles)] = False
    return [np.flatnonzero(row) for row in close]


def spawn_vehicles(
    town: Town,
    rng: np.random.Generator,
    density: float,
    keep_clear: np.ndarray,
    keep_clear_radius: float = 30.0,
) -> list[Vehicle]:
    """Place vehicles along every lane at random gaps, away from ``keep_clear``."""

    def chooser(node, k_in, options):
        weights = np.array([0.5 if (k - k_in) % 4 == 0 else 0.25 for k in options])
        return int(options[rng.choice(len(options), p=weights / weights.sum())])

    vehicles: list[Vehicle] = []
    for node in town.nodes:
        for k in town.arms(node):
            route = Route(town, node, k, chooser)
            lane_length = route.path.length
            s = float(rng.uniform(3.0, 20.0))
            while s < lane_length - 16.0:
                xy = route.path.point(s)
                if rng.random() < density and np.linalg.norm(xy - keep_clear) > keep_clear_radius:
                    v0 = float(rng.uniform(6.5, 9.0))
                    v_stoppable = np.sqrt(6.0 * max(0.0, lane_length - s - 12.0))
                    v = float(min(rng.uniform(0.0, v0 * 0.6), v_stoppable))
                    vehicles.append(
                        Vehicle(route, s, v, v0, CAR_COLORS[rng.integers(len(CAR_COLORS))])
                    )
                    route = Route(town, node, k, chooser)
                s += float(rng.uniform(14.0, 45.0))
    return vehicles
