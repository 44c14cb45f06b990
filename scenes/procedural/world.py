"""Simulating one drive: town + traffic + pedestrians + the expert ego, logged at 10 Hz."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from driving.control import Control
from scenes.procedural.expert import Expert
from scenes.procedural.geometry import to_ego
from scenes.procedural.pedestrians import Crowd
from scenes.procedural.recovery import Perturbation, hold_released
from scenes.procedural.routes import Route
from scenes.procedural.signals import light_state
from scenes.procedural.town import Town, turn_between
from scenes.procedural.traffic import Vehicle, agent_arrays, nearby_agents, spawn_vehicles
from schemas.scene import WAYPOINT_TIMES

SIM_DT = 0.05  # 20 Hz physics, every second tick recorded (as LMDrive records CARLA)
TICKS_PER_FRAME = 2


@dataclass
class FrameState:
    """Everything about one recorded frame that rendering and ground truth need."""

    t: float
    ego: np.ndarray  # x, y, theta, speed
    control: np.ndarray  # throttle, brake, steer
    ego_s: float
    vehicles: np.ndarray  # (N, 5): x, y, yaw, vx, vy
    pedestrians: np.ndarray  # (M, 5): x, y, yaw, vx, vy
    lights: list[str]  # state of every signal head, in ``town.light_heads()`` order
    perturbed: bool = False  # the controls from this frame to the next were perturbed
    light_t: float | None = None  # the time the lights are drawn at, where not t (a relit drive)

    @property
    def lights_at(self) -> float:
        """The time whose signal states ``lights`` shows."""
        return self.t if self.light_t is None else self.light_t


@dataclass
class DriveLog:
    town: Town
    route: Route
    frames: list[FrameState] = field(default_factory=list)
    vehicle_colors: list[tuple[int, int, int]] = field(default_factory=list)
    pedestrian_colors: list[tuple[int, int, int]] = field(default_factory=list)
    halts_completed: dict[int, int] = field(default_factory=dict)  # halt event frame -> done frame


@dataclass(frozen=True)
class EgoEvent:
    """A behaviour an 'other' instruction asks of the ego, from ``frame`` on."""

    kind: str  # "halt" or "slow"
    frame: int
    frames: int = 0  # duration for "slow"; "halt" lasts until the ego has stood still 2 s


def ego_route(town: Town, rng: np.random.Generator, turns: list[str] | None) -> tuple[Route, float]:
    """A route starting on a random lane; ``turns`` forces the first maneuvers where feasible."""
    forced = list(turns or [])

    def chooser(node, k_in, options):
        names = {turn_between(k_in, k): k for k in options}
        if forced:
            want = forced.pop(0)
            if want in names:
                return names[want]
        weights = np.array([0.4 if n == "straight" else 0.3 for n in names])
        keys = list(names.values())
        return int(keys[rng.choice(len(keys), p=weights / weights.sum())])

    while True:
        node = town.nodes[rng.integers(len(town.nodes))]
        arms = town.arms(node)
        k = int(arms[rng.integers(len(arms))])
        route = Route(town, node, k, chooser)
        if forced:
            nxt = town.neighbour(node, k)
            if forced[0] not in town.turns(nxt, k):
                continue
        s = float(rng.uniform(4.0, max(4.5, route.path.length * 0.35)))
        return route, s


class World:
    """The town's traffic, pedestrians and signals around the ego, stepped at 20 Hz
    (:data:`SIM_DT`) and logged at 10 Hz; :meth:`tick` drives the ego by the expert's plan, or by
    the waypoints an agent gives (the same PID controllers and kinematics either way)."""

    def __init__(
        self,
        town: Town,
        seed: int,
        turns: list[str] | None = None,
        events: list[EgoEvent] = (),
        density: float = 0.5,
        pedestrians_per_junction: float = 3.0,
        route: tuple[Route, float] | None = None,
        start_speed: float | None = None,
        perturbations: list[Perturbation] = (),
    ):
        """``route``: the ego's route and where on it to start (a closed-loop route); default: a
        random route (a recorded drive). The ego starts at ``start_speed`` m/s; default: at rest on
        a given route, at a random 3-6 m/s on a random one (entered at speed). ``perturbations``
        disturb the expert's own controls (recovery drives, :mod:`scenes.procedural.recovery`)."""
        rng = np.random.default_rng([town.seed, seed, 9011])
        self.town, self.events, self.perturbations = town, list(events), list(perturbations)
        # holds the expert took back before their span ended (the frame it happened in is still
        # recorded as perturbed: the record comes first in a tick)
        self.released: set[Perturbation] = set()
        if route is None:
            path, s0 = ego_route(town, rng, turns)
            speed = float(rng.uniform(3.0, 6.0))  # drawn either way: the rest of the drive the same
            speed = speed if start_speed is None else start_speed
            self.expert = Expert(town, path, s0, speed=speed)
        else:
            self.expert = Expert(town, route[0], route[1], speed=start_speed or 0.0)
        route = self.expert.route
        self.vehicles: list[Vehicle] = spawn_vehicles(town, rng, density, keep_clear=self.expert.xy)
        self.crowd = Crowd(town, rng, int(pedestrians_per_junction * len(town.nodes)))
        self.heads = town.light_heads()
        self.log = DriveLog(
            town,
            route,
            vehicle_colors=[v.color for v in self.vehicles],
            pedestrian_colors=[p.color for p in self.crowd.people],
        )
        self.by_frame = {e.frame: e for e in self.events}
        self.still_since: float | None = None
        self.halt_frame = -1
        self.is_ped = np.array([False] * (len(self.vehicles) + 1) + [True] * len(self.crowd.people))
        self.t, self.ticks = 0.0, 0
        self._accels: list[float] = []
        # positions and headings of the vehicles, positions and velocities of the pedestrians,
        # kept from the tick after they move to the tick they move again
        self._others: tuple[np.ndarray, ...] | None = None

    def tick(self, waypoints: np.ndarray | None = None, control: Control | None = None) -> None:
        """One 20 Hz tick (every second one records a frame first); ``waypoints`` (4, 2) in the
        ego frame replace the expert's plan for this tick, a ``control`` replaces its plan and its
        PID controllers."""
        town, expert, vehicles, crowd, t = self.town, self.expert, self.vehicles, self.crowd, self.t
        frame, record = divmod(self.ticks, TICKS_PER_FRAME)
        if self._others is None:  # the other agents moved (they move at 10 Hz)
            self._others = (
                np.array([v.xy for v in vehicles]).reshape(-1, 2),
                np.array([v.yaw for v in vehicles]),
                crowd.positions(),
                crowd.velocities(),
            )
        others_xy, others_yaw, ped_xy, ped_vel = self._others
        veh_xy = np.concatenate([others_xy, expert.xy[None]])
        veh_yaw = np.concatenate([others_yaw, [expert.theta]])
        veh_v = np.array([v.v for v in vehicles] + [expert.v])
        veh_vel = np.stack([veh_v * np.cos(veh_yaw), veh_v * np.sin(veh_yaw)], axis=1)
        if record == 0:
            self._record(frame, veh_xy, veh_yaw, veh_vel, ped_xy, ped_vel)
        all_xy = np.concatenate([veh_xy, ped_xy])
        all_vel = np.concatenate([veh_vel, ped_vel])
        speeds = np.concatenate([veh_v, np.zeros(len(ped_xy))])
        if record == 0:  # other agents move at 10 Hz, the ego's controller runs at 20 Hz
            near = nearby_agents(all_xy, speeds, len(veh_xy))
            self._accels = [
                v.acceleration(town, t, agent_arrays(all_xy, all_vel, self.is_ped, near[i]))
                for i, v in enumerate(vehicles)
            ]
        else:
            near = nearby_agents(all_xy[len(vehicles) :], speeds[len(vehicles) :], 1)
            near = [None] * len(vehicles) + [near[0] + len(vehicles)]
        agents = agent_arrays(all_xy, all_vel, self.is_ped, near[len(vehicles)])
        if waypoints is None and control is None:
            control = self._perturbed_control(t, agents)
        expert.step(SIM_DT, t, agents, waypoints, control)
        if record == 0:
            dt = SIM_DT * TICKS_PER_FRAME
            for v, a in zip(vehicles, self._accels, strict=True):
                v.v = max(0.0, v.v + a * dt)
                v.s += v.v * dt
            crowd.step(dt, t, veh_xy)
            self._others = None
        if expert.halt_at is not None:
            self.still_since = (
                (self.still_since if self.still_since is not None else t)
                if expert.v < 0.05
                else None
            )
            if self.still_since is not None and t - self.still_since >= 2.0:
                expert.resume()
                self.log.halts_completed[self.halt_frame] = frame
        self.t += SIM_DT
        self.ticks += 1

    def _perturbed_control(self, t: float, agents: dict) -> Control | None:
        """The expert's own control with the perturbation active now applied; ``None`` when none
        is (the expert then plans and controls as usual)."""
        now = self.ticks / TICKS_PER_FRAME
        active = [p for p in self.perturbations if p.covers(int(now)) and p not in self.released]
        if not active:
            return None
        expert, p = self.expert, active[0]
        if p.hold and hold_released(expert.v, expert.planned_speed(t, agents)[1]):
            self.released.add(p)
            return None
        control = expert.controller.step(expert.plan(t, agents), expert.v)
        return p.apply(control, now, expert.v)

    def expert_waypoints(self) -> np.ndarray:
        """(4, 2) ego-frame points where the expert would put the ego :data:`WAYPOINT_TIMES` from
        now, driving from the current state (whoever drove into it) in a copy of the world, which
        itself is left as it is: the training drives' waypoint labels (the expert's future
        positions) for any state, such as one an agent's own driving led to."""
        fork = self._fork()
        e = fork.expert
        x, y, theta = e.x, e.y, e.theta
        at = [round(t / SIM_DT) for t in WAYPOINT_TIMES]
        points = []
        for tick in range(1, max(at) + 1):
            fork.tick()
            if tick in at:
                points.append(fork.expert.xy)
        return to_ego(np.array(points), x, y, theta)

    def _fork(self) -> World:
        """A copy of the world that ticks on without touching this one: everything copied but the
        town (no tick changes it) and the logged frames (the copy's log starts empty). Routes
        extend themselves 90 m ahead through choosers that draw from this world's generator
        (closures, which a deep copy shares): the copy's routes take their first exit instead, a
        choice 90 m ahead that no fork of a few seconds reaches."""
        fork = copy.deepcopy(self, {id(self.town): self.town, id(self.log.frames): []})
        for route in [fork.expert.route, *(v.route for v in fork.vehicles)]:
            route.choose = _first_exit
        return fork

    def lane_waypoints(self, speed: float) -> np.ndarray:
        """Ego-frame waypoints along the route at ``speed`` m/s, blind to traffic and lights:
        what a lane-keeping, constant-speed agent asks for."""
        e = self.expert
        e.route.ensure(e.s)
        d = np.maximum(speed * np.asarray(WAYPOINT_TIMES), [0.0, 0.0, 3.5, 5.0])
        return to_ego(e.route.path.at(e.s + d), e.x, e.y, e.theta)

    def _record(self, frame, veh_xy, veh_yaw, veh_vel, ped_xy, ped_vel) -> None:
        """Log frame ``frame`` and start the ego events due at it."""
        expert = self.expert
        ped_yaw = np.arctan2(ped_vel[:, 1], ped_vel[:, 0]) if len(ped_vel) else np.zeros(0)
        self.log.frames.append(
            FrameState(
                t=self.t,
                ego=np.array([expert.x, expert.y, expert.theta, expert.v]),
                control=np.array(
                    [expert.control.throttle, expert.control.brake, expert.control.steer]
                ),
                ego_s=expert.s,
                vehicles=np.concatenate([veh_xy[:-1], veh_yaw[:-1, None], veh_vel[:-1]], axis=1),
                pedestrians=np.concatenate([ped_xy, ped_yaw[:, None], ped_vel], axis=1),
                lights=[light_state(self.town, node, k, self.t) for node, k, _ in self.heads],
                perturbed=any(
                    p.covers(frame) and p not in self.released for p in self.perturbations
                ),
            )
        )
        event = self.by_frame.get(frame)
        if event is not None and event.kind == "halt":
            expert.halt()
            self.still_since, self.halt_frame = None, frame
        if event is not None and event.kind == "slow":
            expert.slow = True
        for e in self.events:
            if e.kind == "slow" and frame == e.frame + e.frames:
                expert.slow = False


def _first_exit(node: tuple[int, int], k_in: int, options: list[int]) -> int:
    """A route chooser that always takes the first exit (see :meth:`World._fork`)."""
    return options[0]


def simulate(
    town: Town,
    seed: int,
    frames: int,
    turns: list[str] | None = None,
    events: list[EgoEvent] = (),
    density: float = 0.5,
    pedestrians_per_junction: float = 3.0,
    start_speed: float | None = None,
    perturbations: list[Perturbation] = (),
) -> DriveLog:
    """Run the world for ``frames`` recorded frames, the expert driving, and return the log
    (``start_speed``, ``perturbations``: see :class:`World`)."""
    world = World(
        town,
        seed,
        turns,
        events,
        density,
        pedestrians_per_junction,
        start_speed=start_speed,
        perturbations=perturbations,
    )
    for _ in range(frames * TICKS_PER_FRAME):
        world.tick()
    return world.log
