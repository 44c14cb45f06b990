"""LMDrive's conventions, as found in opendilab/LMDrive, and the coordinate conversions they need.

* ``x``, ``y``: the CARLA world location of the ego (``leaderboard/team_code/auto_pilot.py``
  ``run_step`` sets ``self._loc``; ``leaderboard/team_code/base_agent.py`` ``save`` stores it).
  CARLA is left-handed (x east, y south): contract world x = ``x``, world y = ``-y``.
* ``gps_x``, ``gps_y``: GNSS latitude/longitude times ``RoutePlanner.scale``
  (``leaderboard/team_code/planner.py``), i.e. metres north and metres east. ``auto_pilot.py``
  ``disturb_waypoints`` maps a route position back with ``carla.Location(pos[1], -pos[0])``.
* ``theta``: the IMU compass (``base_agent.py`` ``tick``): radians, 0 facing north, growing
  clockwise (east is π/2). Contract theta = π/2 − compass; NaN becomes 0 as in LMDrive's
  loaders.
* ``future_waypoints``: the next 50 nodes of the expert's route, ``[gps_x, gps_y, road_option]``
  (``planner.py`` ``get_future_waypoints``): a path in space, not positions in time. LMDrive's
  training loaders take the gps position of frames ``t + 5k`` instead (0.5 s apart at 10 Hz;
  ``LAVIS/lavis/datasets/datasets/carla_dataset_llm.py``). See
  :meth:`~scenes.lmdrive.scene.LMDriveScene._waypoints`.
* ``actors_data``: ``{actor_id: {loc, ori, box, vel, tpe, sta, ...}}`` in CARLA coordinates;
  ``ori`` is the forward vector, ``box`` the half extents (x, y), ``tpe`` 0 vehicle / 1 walker /
  2 traffic light, ``sta`` ``int(carla.TrafficLightState)`` (0 red, 1 yellow, 2 green, 3 off,
  4 unknown) (``auto_pilot.py`` ``collect_actor_data``). The ego is in it too; LMDrive drops the
  actor within 1 m of the ego (``vision_encoder/timm/data/heatmap_utils.py``).
* traffic light: ``affected_light_id`` is the light governing the ego (``auto_pilot.py``), its
  state is ``actors_data[id]["sta"]``. LMDrive's stage-1 label uses a non-empty
  ``is_red_light_present`` instead (``vision_encoder/timm/data/carla_dataset.py``); the reader
  falls back to that when the light is not in ``actors_data``.
* instructions: each line of ``navigation_instruction_list.txt`` is one clip ``start_frame ..
  end_frame`` with a rule name (``instruction``), ``instruction_id`` (0-33 turn, 34-49 follow,
  50-59 notice, 60-64 other) and ``instruction_args`` filling ``[x]``, ``left/right``, ``[y]`` of
  the templates in ``leaderboard/leaderboard/envs/instruction_dict.json``
  (``tools/data_parsing/parse_instruction.py``). ``notice_instruction_list.json`` maps
  ``route_path`` to ``[{frame_id, instruction_id, ...}]`` (``tools/data_parsing/parse_notice.py``).
* ``weather_id`` indexes CARLA's weather presets in ``base_agent.py`` ``WEATHERS`` order.

The writer stores the LMDrive keys and, under ``lmgd``, the exact contract measurements; the
reader prefers ``lmgd`` when present, so our own round trip is exact.
"""

from __future__ import annotations

import math

import numpy as np

# base_agent.py WEATHERS, in order: weather_id indexes this tuple.
WEATHER_NAMES = (
    "ClearNoon", "ClearSunset", "CloudyNoon", "CloudySunset", "WetNoon", "WetSunset",
    "MidRainyNoon", "MidRainSunset", "WetCloudyNoon", "WetCloudySunset", "HardRainNoon",
    "HardRainSunset", "SoftRainNoon", "SoftRainSunset", "ClearNight", "CloudyNight", "WetNight",
    "WetCloudyNight", "SoftRainNight", "MidRainyNight", "HardRainNight",
)  # fmt: skip
ACTOR_TYPES = ("vehicle", "pedestrian", "traffic_light")  # actors_data "tpe" 0, 1, 2
CARLA_LIGHT_STATES = ("red", "yellow", "green")  # carla.TrafficLightState 0, 1, 2
CARLA_LIGHT_OFF = 3
DEFAULT_HEIGHT = {
    "vehicle": 1.5,
    "pedestrian": 1.8,
    "traffic_light": 3.0,
}  # LMDrive stores no height
LIGHT_FOOTPRINT = 0.5  # metres; LMDrive stores no box for lights
EGO_RADIUS = 1.0  # metres; the vehicle this close to the ego is the ego
ROAD_OPTION_LANEFOLLOW = 4  # agents.navigation.local_planner.RoadOption.LANEFOLLOW


def wrap(angle: float) -> float:
    """Angle in (-π, π]."""
    return math.pi - (math.pi - angle) % (2 * math.pi)


def compass_to_theta(compass: float) -> float:
    """IMU compass (0 north, clockwise) -> contract heading (0 east, counter-clockwise)."""
    return wrap(math.pi / 2 - compass)


def theta_to_compass(theta: float) -> float:
    """Contract heading -> IMU compass in [0, 2π)."""
    return (math.pi / 2 - theta) % (2 * math.pi)


def to_ego(d: np.ndarray, theta: float) -> np.ndarray:
    """World displacements (N, 2) east/north -> ego frame (x forward, y left)."""
    c, s = math.cos(theta), math.sin(theta)
    d = np.asarray(d, dtype=np.float64).reshape(-1, 2)
    return np.stack([d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c], axis=1)


def from_ego(p: np.ndarray, theta: float) -> np.ndarray:
    """Ego-frame vectors (N, 2) -> world displacements east/north."""
    c, s = math.cos(theta), math.sin(theta)
    p = np.asarray(p, dtype=np.float64).reshape(-1, 2)
    return np.stack([p[:, 0] * c - p[:, 1] * s, p[:, 0] * s + p[:, 1] * c], axis=1)


def along(points: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Points at arc lengths ``s`` along a polyline (clamped to its ends)."""
    keep = np.concatenate([[True], np.linalg.norm(np.diff(points, axis=0), axis=1) > 1e-6])
    pts = points[keep]
    cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    s = np.clip(s, 0.0, cum[-1])
    return np.stack([np.interp(s, cum, pts[:, 0]), np.interp(s, cum, pts[:, 1])], axis=1)
