"""One frame's LMDrive measurements and actors -> contract values (see
:mod:`scenes.lmdrive.conventions`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from scenes.lmdrive.conventions import (
    ACTOR_TYPES,
    CARLA_LIGHT_STATES,
    DEFAULT_HEIGHT,
    EGO_RADIUS,
    LIGHT_FOOTPRINT,
    WEATHER_NAMES,
    along,
    compass_to_theta,
    to_ego,
    wrap,
)
from scenes.lmdrive.layout import LMGD_KEY
from schemas.errors import SceneFormatError
from schemas.scene import WAYPOINT_TIMES, Instruction, Measurements, SceneObject


def num(raw: dict, key: str, path: Path) -> float:
    """``raw[key]`` as a float."""
    try:
        return float(raw[key])
    except KeyError as e:
        raise SceneFormatError(f"{path}: missing key {key!r}") from e
    except (TypeError, ValueError) as e:
        raise SceneFormatError(f"{path}: key {key!r} is not a number ({raw[key]!r})") from e


def ego_pose(raw: dict, path: Path) -> tuple[float, float, float]:
    """World x, y and contract theta of an LMDrive measurement (CARLA location, compass)."""
    compass = num(raw, "theta", path)
    compass = 0.0 if math.isnan(compass) else compass  # as LMDrive's loaders
    return num(raw, "x", path), -num(raw, "y", path), compass_to_theta(compass)


def measurements_from_dict(d: dict, path: Path) -> Measurements:
    """Inverse of :meth:`Measurements.to_dict`."""
    distance = d.get("light_distance")  # absent before drive version 3
    try:
        return Measurements(
            frame=int(d["frame"]),
            **{k: float(d[k]) for k in ("x", "y", "theta", "speed", "steer", "throttle", "brake")},
            waypoints=np.asarray(d["waypoints"], dtype=np.float32).reshape(len(WAYPOINT_TIMES), 2),
            light_state=str(d["light_state"]),
            is_junction=bool(d["is_junction"]),
            objects=tuple(SceneObject.from_dict(o) for o in d["objects"]),
            instruction=Instruction.from_dict(d["instruction"]),
            instruction_completed=bool(d["instruction_completed"]),
            weather=str(d["weather"]),
            perturbed=bool(d.get("perturbed", False)),  # absent before recovery drives existed
            light_distance=math.inf if distance is None else float(distance),
            # absent before drive version 4
            **{k: _or_nan(d.get(k)) for k in ("lane_offset", "lane_heading")},
        )
    except (KeyError, TypeError, ValueError) as e:
        raise SceneFormatError(f"{path}: bad {LMGD_KEY!r} entry ({e!r})") from e


def _or_nan(value: object) -> float:
    return math.nan if value is None else float(value)


def route_waypoints(raw: dict, theta: float, speed: float, path: Path) -> np.ndarray:
    """Sample ``future_waypoints`` (a route path) at arc length ``speed * t`` ahead of the ego."""
    try:
        # [gps_x (north), gps_y (east), option] relative to the ego's own gps position ->
        # east/north.
        nodes = np.array([[float(p[1]), float(p[0])] for p in raw["future_waypoints"]])
        origin = np.array([float(raw["gps_y"]), float(raw["gps_x"])])
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise SceneFormatError(f"{path}: bad 'future_waypoints' or gps keys ({e!r})") from e
    ego = to_ego(nodes - origin, theta)
    # The planner keeps the last node passed until the next is reached: drop nodes behind the ego.
    ahead = np.flatnonzero(ego[:, 0] > 0)
    path_pts = np.concatenate([np.zeros((1, 2)), ego[ahead[0] :] if ahead.size else ego[:0]])
    return along(path_pts, speed * np.asarray(WAYPOINT_TIMES))


def _light_name(sta: object) -> str:
    """``int(carla.TrafficLightState)`` -> contract light state (off / unknown -> "none")."""
    if isinstance(sta, int) and 0 <= sta < len(CARLA_LIGHT_STATES):
        return CARLA_LIGHT_STATES[sta]
    return "none"


def light_distance(raw: dict) -> float:
    """0 where LMDrive's expert marks a red light as present (its trigger volume or within 8 m of
    it, ``auto_pilot.py``'s ``_is_light_red``), else inf: LMDrive records no stop-line distance."""
    return 0.0 if raw.get("is_red_light_present") else math.inf


def light_state(raw: dict, actors: dict) -> str:
    """State of the light governing the ego: ``affected_light_id`` in actors_data, else red flag."""
    light = actors.get(str(raw.get("affected_light_id", -1)))
    if isinstance(light, dict) and light.get("tpe") == ACTOR_TYPES.index("traffic_light"):
        return _light_name(light.get("sta"))
    return "red" if raw.get("is_red_light_present") else "none"


def _actor_object(actor: dict, pose: tuple[float, float, float]) -> SceneObject | None:
    """One actors_data entry in the ego frame; None for the ego itself and unknown types."""
    x, y, theta = pose
    tpe = int(actor["tpe"])
    if not 0 <= tpe < len(ACTOR_TYPES):
        return None
    cls = ACTOR_TYPES[tpe]
    loc, ori, vel = actor["loc"], actor["ori"], actor.get("vel", [0.0, 0.0, 0.0])
    d = np.array([float(loc[0]) - x, -float(loc[1]) - y])  # CARLA y points south
    if cls == "vehicle" and np.hypot(*d) <= EGO_RADIUS:
        return None
    fwd, left = to_ego(d, theta)[0]
    vx, vy = to_ego([float(vel[0]), -float(vel[1])], theta)[0]
    box = actor.get("box") or [LIGHT_FOOTPRINT / 2, LIGHT_FOOTPRINT / 2]  # half extents
    return SceneObject(
        cls=cls,
        x=float(fwd),
        y=float(left),
        yaw=wrap(math.atan2(-float(ori[1]), float(ori[0])) - theta),
        length=2 * float(box[0]),
        width=2 * float(box[1]),
        height=2 * float(box[2]) if len(box) > 2 else DEFAULT_HEIGHT[cls],
        vx=float(vx),
        vy=float(vy),
        state=_light_name(actor.get("sta")) if cls == "traffic_light" else "",
    )


def objects(actors: dict, pose: tuple[float, float, float], path: Path) -> tuple[SceneObject, ...]:
    """Every actor but the ego, in the ego frame of ``pose``."""
    found = []
    for actor_id, actor in actors.items():
        try:
            obj = _actor_object(actor, pose)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise SceneFormatError(f"{path}: bad actor {actor_id!r} ({e!r})") from e
        if obj is not None:
            found.append(obj)
    return tuple(found)


def weather_name(weather_id: object) -> str:
    """CARLA's name of a ``weather_id`` ("unknown" when there is none)."""
    if weather_id is None:
        return "unknown"
    wid = int(weather_id)
    return WEATHER_NAMES[wid] if 0 <= wid < len(WEATHER_NAMES) else f"weather_{wid}"
