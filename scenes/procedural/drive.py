"""A procedural drive as a contract :class:`~schemas.scene.Scene`.

The drive is simulated when the scene is made (cheap); images are rendered only when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from driving.vehicle import HALF_LENGTH, VEHICLE_SIZE
from scenes.procedural.displaced import displace, displacements
from scenes.procedural.geometry import to_ego
from scenes.procedural.ground import GroundTexture, build_ground
from scenes.procedural.instructions import active_per_frame, build_timeline, plan_events
from scenes.procedural.recovery import plan_perturbations
from scenes.procedural.relit import relight
from scenes.procedural.render import Renderer
from scenes.procedural.routes import PEDESTRIAN_SIZE, Route
from scenes.procedural.signals import light_state
from scenes.procedural.town import Town, make_town, turn_between
from scenes.procedural.weather import get_weather
from scenes.procedural.world import FrameState, simulate
from schemas.errors import ConfigError
from schemas.scene import (
    CENTER_VIEW,
    FPS,
    TURNS,
    VIEWS,
    Instruction,
    InstructionSpan,
    Measurements,
    SceneObject,
)

OBJECT_RANGE = 50.0
LIGHT_RANGE = 45.0
WAYPOINT_FRAMES = (2, 4, 6, 8)  # t+0.2 .. 0.8 s at 10 Hz
# What a drive of given seeds records; raised whenever a change alters it, so caches of rendered
# drives know to render again. 2: a notice is said after the navigation instruction. 3: the
# measurements carry the distance to the governing light's stop line. 4: and the ego's lane pose.
# 5: red and yellow lamps are drawn (they were hidden behind their housing: props.LAMP_LEAD).
DRIVE_VERSION = 5
# What a recovery drive's perturbations are (scenes.procedural.recovery); raised when they change,
# so that only recovery drives render again. 2: a steering impulse replaces the expert's steering.
# 3: speed holds, released where the expert must brake hard to stop in time.
RECOVERY_VERSION = 3
# What a displaced drive's camera does (scenes.procedural.displaced); raised when it changes.
# 2: up to 2 m and 30 degrees (was 1.5 m and 15 degrees). 3: the lane pose in corners too.
DISPLACED_VERSION = 3
# What a relit drive's lights show (scenes.procedural.relit); raised when it changes.
RELIT_VERSION = 1


@dataclass(frozen=True)
class DriveSpec:
    """Everything that determines a procedural drive."""

    town_seed: int
    route_seed: int
    weather: str = "clear_noon"
    frames: int = 200
    size: tuple[int, int] = (128, 128)
    turns: tuple[str, ...] = ()  # force the first maneuvers (where the junction allows them)
    start_at_rest: bool = False  # as LMDrive's routes start; default: entered at 3-6 m/s
    recovery: bool = False  # the expert's controls perturbed now and then, and it recovers
    center_view: bool = False  # images also have the centre view (schemas.scene.CENTER_VIEW)
    # seen from a camera moved across the lane and turned (scenes.procedural.displaced); the
    # measurements are the displaced car's
    displaced: bool = False
    # its traffic lights drawn in states the expert did not drive by, the measurements' light state
    # the drawn one (scenes.procedural.relit)
    relit: bool = False

    def validate(self) -> None:
        get_weather(self.weather)
        if self.frames < 1:
            raise ConfigError(f"frames must be >= 1, got {self.frames}")
        if len(self.size) != 2 or min(self.size) < 16 or max(self.size) > 1024:
            raise ConfigError(f"size must be (height, width) between 16 and 1024, got {self.size}")
        bad = [t for t in self.turns if t not in TURNS]
        if bad:
            raise ConfigError(f"unknown turn(s) {bad}; valid: {', '.join(TURNS)}")


@dataclass(frozen=True)
class JunctionApproach:
    """The next junction on the ego's route (see :meth:`ProceduralScene.next_junction`)."""

    node: tuple[int, int]
    turn: str  # 'left', 'straight' or 'right'
    stop_line_distance: float  # metres from the front bumper; negative once past the line


def drive_version(spec: DriveSpec) -> str:
    """The version a cache stamps ``spec``'s rendered drive with: :data:`DRIVE_VERSION`, and
    :data:`RECOVERY_VERSION` after it for a recovery drive, ``+displaced`` and
    :data:`DISPLACED_VERSION` for a displaced one, ``+relit`` and :data:`RELIT_VERSION` for a relit
    one, and ``+center`` when its images have the centre view."""
    version = f"{DRIVE_VERSION}.{RECOVERY_VERSION}" if spec.recovery else str(DRIVE_VERSION)
    if spec.displaced:
        version += f"+displaced{DISPLACED_VERSION}"
    if spec.relit:
        version += f"+relit{RELIT_VERSION}"
    return f"{version}+center" if spec.center_view else version


def scene_name(spec: DriveSpec) -> str:
    """The drive's name (:attr:`ProceduralScene.name`), known without simulating it."""
    rest = "_rest" if spec.start_at_rest else ""
    recovery = "_recovery" if spec.recovery else ""
    displaced = "_displaced" if spec.displaced else ""
    relit = "_relit" if spec.relit else ""
    return (
        f"town{spec.town_seed:04d}_route{spec.route_seed:04d}{rest}{recovery}{displaced}{relit}"
        f"_{spec.weather}"
    )


@lru_cache(maxsize=4)
def ground_of_town(seed: int) -> GroundTexture:
    """The ground texture of town ``seed`` (cached: drawing it takes about half a second)."""
    return build_ground(make_town(seed))


@lru_cache(maxsize=64)
def _drive(
    town_seed: int,
    route_seed: int,
    frames: int,
    turns: tuple[str, ...],
    at_rest: bool,
    recovery: bool,
) -> tuple:
    """The simulated drive and its instruction timeline, shared by every weather and image size
    of the same drive (cached: simulating takes seconds, and a recipe asks for each drive in
    several weathers). Read-only."""
    town = make_town(town_seed)
    rng = np.random.default_rng([town_seed, route_seed, 515])
    events = plan_events(rng, frames)
    perturbations = (
        plan_perturbations(np.random.default_rng([town_seed, route_seed, 717]), frames)
        if recovery
        else []
    )
    log = simulate(
        town,
        route_seed,
        frames + max(WAYPOINT_FRAMES),
        list(turns),
        events,
        start_speed=0.0 if at_rest else None,
        perturbations=perturbations,
    )
    timeline = [
        (_clip(s, frames), done and s.end_frame < frames, p)
        for s, done, p in build_timeline(log, events, rng)
        if s.start_frame < frames
    ]
    return town, events, log, timeline, active_per_frame(timeline, frames)


class ProceduralScene:
    """A drive through a procedural town, seen by three cameras at 10 Hz."""

    views = VIEWS
    fps = FPS

    def __init__(self, spec: DriveSpec):
        spec.validate()
        self.spec = spec
        self.size = tuple(spec.size)
        self.name = scene_name(spec)
        if spec.center_view:
            self.views = (*VIEWS, CENTER_VIEW)
        self.weather = get_weather(spec.weather)
        self.town, self.events, self.log, self._timeline, (self._active, self._completed) = _drive(
            spec.town_seed,
            spec.route_seed,
            spec.frames,
            tuple(spec.turns),
            spec.start_at_rest,
            spec.recovery,
        )
        self._renderer: Renderer | None = None
        self._frames = self.log.frames
        if spec.displaced:
            rng = np.random.default_rng([spec.town_seed, spec.route_seed, 919])
            path = self.log.route.path
            self._frames = [
                displace(f, path, shift, turn)
                for f, (shift, turn) in zip(
                    self.log.frames, displacements(rng, len(self.log.frames)), strict=True
                )
            ]
        if spec.relit:
            rng = np.random.default_rng([spec.town_seed, spec.route_seed, 1021])
            self._frames = relight(self.town, self.log.route, self._frames, rng)

    def __len__(self) -> int:
        return self.spec.frames

    @property
    def tags(self) -> dict:
        return {
            "source": "procedural",
            "town_seed": self.spec.town_seed,
            "route_seed": self.spec.route_seed,
            "weather": self.spec.weather,
            "night": self.weather.night,
        }

    def instructions(self) -> list[InstructionSpan]:
        return [s for s, _, _ in self._timeline]

    def images(self, i: int) -> dict[str, np.ndarray]:
        self._check(i)
        if self._renderer is None:
            self._renderer = Renderer(
                self.town,
                ground_of_town(self.spec.town_seed),
                self.weather,
                self.size,
                center=self.spec.center_view,
            )
        return self._renderer.render(
            self._frames[i], self.log.vehicle_colors, self.log.pedestrian_colors, frame_index=i
        )

    def measurements(self, i: int) -> Measurements:
        self._check(i)
        f = self._frames[i]
        future = np.array([self.log.frames[i + k].ego[:2] for k in WAYPOINT_FRAMES])
        x, y, theta = (float(v) for v in f.ego[:3])
        return frame_measurements(
            self.town,
            self.log.route,
            f,
            i,
            to_ego(future, x, y, theta).astype(np.float32),
            self._active[i],
            bool(self._completed[i]),
            self.spec.weather,
        )

    def junction_ahead(self, i: int, within: float = 40.0) -> list[str] | None:
        """Feasible maneuvers ('left', 'straight', 'right') at the junction the ego is in or
        approaching within ``within`` metres at frame ``i``; ``None`` when there is none."""
        self._check(i)
        front = self.log.frames[i].ego_s + HALF_LENGTH
        m = self.log.route.next_maneuver(front)
        if m is None or m.s_stop - front > within or len(self.town.arms(m.node)) < 3:
            return None
        turns = self.town.turns(m.node, m.k_in)
        return [t for t in TURNS if t in turns]

    def next_junction(self, i: int) -> JunctionApproach | None:
        """The junction the ego is approaching or crossing at frame ``i`` (``None`` when no junction
        is left on the route): its node, the route's turn there and the distance from the front
        bumper to its stop line (negative once past the line)."""
        self._check(i)
        front = self.log.frames[i].ego_s + HALF_LENGTH
        m = self.log.route.next_maneuver(front)
        return (
            None
            if m is None
            else JunctionApproach(m.node, turn_between(m.k_in, m.k_out), float(m.s_stop - front))
        )

    def _check(self, i: int) -> None:
        if not 0 <= i < len(self):
            raise IndexError(f"frame {i} out of range for {self.name} ({len(self)} frames)")


def frame_measurements(
    town: Town,
    route: Route,
    f: FrameState,
    index: int,
    waypoints: np.ndarray,
    instruction: Instruction,
    completed: bool,
    weather: str,
) -> Measurements:
    """The contract measurements of recorded frame ``f`` (frame ``index`` of a drive on ``route``)
    with these waypoint labels and instruction: pose, controls, the governing light within
    :data:`LIGHT_RANGE` of its stop line, the junction flag, the lane pose against the route's
    lane centre (outside junction boxes but for corners) and :func:`frame_objects`."""
    x, y, theta, speed = (float(v) for v in f.ego)
    m = route.next_maneuver(f.ego_s + HALF_LENGTH)
    state, distance = "none", np.inf
    if m is not None and town.has_light(m.node):
        gap = m.s_stop - f.ego_s - HALF_LENGTH
        if -0.5 < gap < LIGHT_RANGE:
            state, distance = light_state(town, m.node, m.k_in, f.lights_at), float(gap)
    in_junction = town.in_junction_box(x, y)
    no_lane = in_junction and not town.is_corner_box(x, y)
    lane = (np.nan, np.nan) if no_lane else route.path.lane_pose(f.ego_s, x, y, theta)
    return Measurements(
        frame=index,
        x=x,
        y=y,
        theta=theta,
        speed=speed,
        throttle=float(f.control[0]),
        brake=float(f.control[1]),
        steer=float(f.control[2]),
        waypoints=np.asarray(waypoints, dtype=np.float32),
        light_state=state,
        light_distance=distance,
        is_junction=bool(in_junction),
        objects=frame_objects(town, f),
        instruction=instruction,
        instruction_completed=completed,
        weather=weather,
        perturbed=f.perturbed,
        lane_offset=lane[0],
        lane_heading=lane[1],
    )


def frame_objects(town: Town, f: FrameState) -> tuple[SceneObject, ...]:
    """Vehicles, pedestrians and signal heads within :data:`OBJECT_RANGE` of the ego at ``f``, in
    the ego frame."""
    x, y, theta = (float(v) for v in f.ego[:3])
    out: list[SceneObject] = []
    c, s = np.cos(theta), np.sin(theta)
    for cls, arr, size in (
        ("vehicle", f.vehicles, VEHICLE_SIZE),
        ("pedestrian", f.pedestrians, PEDESTRIAN_SIZE),
    ):
        if not len(arr):
            continue
        rel = to_ego(arr[:, :2], x, y, theta)
        near = np.flatnonzero(np.hypot(rel[:, 0], rel[:, 1]) < OBJECT_RANGE)
        for j in near:
            vx, vy = arr[j, 3], arr[j, 4]
            out.append(
                SceneObject(
                    cls=cls,
                    x=float(rel[j, 0]),
                    y=float(rel[j, 1]),
                    yaw=float((arr[j, 2] - theta + np.pi) % (2 * np.pi) - np.pi),
                    length=size[0],
                    width=size[1],
                    height=size[2],
                    vx=float(c * vx + s * vy),
                    vy=float(-s * vx + c * vy),
                )
            )
    for (_, k, head), st in zip(town.light_heads(), f.lights, strict=True):
        rel = to_ego(head[None], x, y, theta)[0]
        if np.hypot(*rel) < OBJECT_RANGE:
            yaw = float((k * np.pi / 2 + np.pi - theta + np.pi) % (2 * np.pi) - np.pi)
            out.append(
                SceneObject(
                    cls="traffic_light",
                    x=float(rel[0]),
                    y=float(rel[1]),
                    yaw=yaw,
                    length=0.6,
                    width=0.84,
                    height=6.0,
                    state=st,
                )
            )
    return tuple(out)


def _clip(span: InstructionSpan, frames: int) -> InstructionSpan:
    return InstructionSpan(span.instruction, span.start_frame, min(span.end_frame, frames - 1))
