"""LMDrive-format routes (CARLA recordings) as contract scenes: a lazy reader and an exact writer.

One route folder (LMDrive's layout, so real recordings drop in)::

    <route>/rgb_front/ rgb_left/ rgb_right/ %04d.{jpg,png}   or   rgb_full/%04d.jpg (stacked views)
    <route>/measurements/%04d.json    <route>/actors_data/%04d.json (optional)
    <route>/navigation_instruction_list.txt    <route>/notice_instruction_list.json
    <route>/lmgd_scene.json           written by us only: name, fps, views, size, tags
    <root>/dataset_index.txt          lines ``<route_dir>/ <n_frames>``

Real LMDrive keeps the two instruction files at the dataset root, keyed by ``route_path``; a route
without its own files reads them from its parent folder (or from the root given to
:func:`open_root`).

LMDrive's conventions, as found in opendilab/LMDrive, and what the reader does with them:

* ``x``, ``y``: the CARLA world location of the ego (``leaderboard/team_code/auto_pilot.py``
  ``run_step`` sets ``self._loc``; ``leaderboard/team_code/base_agent.py`` ``save`` stores it).
  CARLA is left-handed (x east, y south): contract world x = ``x``, world y = ``-y``.
* ``gps_x``, ``gps_y``: GNSS latitude/longitude times ``RoutePlanner.scale``
  (``leaderboard/team_code/planner.py``), i.e. metres north and metres east. ``auto_pilot.py``
  ``disturb_waypoints`` maps a route position back with ``carla.Location(pos[1], -pos[0])``.
* ``theta``: the IMU compass (``base_agent.py`` ``tick``): radians, 0 facing north, growing
  clockwise (east is π/2). Contract theta = π/2 − compass; NaN becomes 0 as in LMDrive's loaders.
* ``future_waypoints``: the next 50 nodes of the expert's route, ``[gps_x, gps_y, road_option]``
  (``planner.py`` ``get_future_waypoints``): a path in space, not positions in time. LMDrive's
  training loaders take the gps position of frames ``t + 5k`` instead (0.5 s apart at 10 Hz;
  ``LAVIS/lavis/datasets/datasets/carla_dataset_llm.py``). See :meth:`LMDriveScene._waypoints`.
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

import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import takewhile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from schemas.errors import BadInputError, SceneFormatError
from schemas.scene import (
    FPS,
    INSTRUCTION_CATEGORIES,
    VIEWS,
    WAYPOINT_TIMES,
    Instruction,
    InstructionSpan,
    Measurements,
    Scene,
    SceneObject,
)
from storage.atomic import atomic_path, write_bytes

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

MEASUREMENTS_DIR = "measurements"
ACTORS_DIR = "actors_data"
FULL_DIR = "rgb_full"
FULL_ORDER = ("front", "left", "right", "rear")  # rows of rgb_full, top to bottom
NAV_FILE = "navigation_instruction_list.txt"
NOTICE_FILE = "notice_instruction_list.json"
INDEX_FILE = "dataset_index.txt"
META_FILE = "lmgd_scene.json"
LMGD_KEY = "lmgd"
IMAGE_EXTS = ("png", "jpg")
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 3]
_FRAME_RE = re.compile(r"^(\d{4,})\.([a-z]+)$")

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
_ARG_NAMES = ("x", "direction", "y")  # instruction_args fill "[x]", "left/right", "[y]"
_PLACEHOLDERS = (("[x]", "x"), ("left/right", "direction"), ("[y]", "y"))
_CATEGORY_LAST_ID = ((33, "turn"), (49, "follow"), (59, "notice"), (64, "other"))
NO_INSTRUCTION = Instruction(text="", instruction_id=-1, category="other")


# --------------------------------------------------------------------------- geometry


def _wrap(angle: float) -> float:
    """Angle in (-π, π]."""
    return math.pi - (math.pi - angle) % (2 * math.pi)


def _compass_to_theta(compass: float) -> float:
    """IMU compass (0 north, clockwise) -> contract heading (0 east, counter-clockwise)."""
    return _wrap(math.pi / 2 - compass)


def _theta_to_compass(theta: float) -> float:
    return (math.pi / 2 - theta) % (2 * math.pi)


def _to_ego(d: np.ndarray, theta: float) -> np.ndarray:
    """World displacements (N, 2) east/north -> ego frame (x forward, y left)."""
    c, s = math.cos(theta), math.sin(theta)
    d = np.asarray(d, dtype=np.float64).reshape(-1, 2)
    return np.stack([d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c], axis=1)


def _from_ego(p: np.ndarray, theta: float) -> np.ndarray:
    """Ego-frame vectors (N, 2) -> world displacements east/north."""
    c, s = math.cos(theta), math.sin(theta)
    p = np.asarray(p, dtype=np.float64).reshape(-1, 2)
    return np.stack([p[:, 0] * c - p[:, 1] * s, p[:, 0] * s + p[:, 1] * c], axis=1)


def _along(points: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Points at arc lengths ``s`` along a polyline (clamped to its ends)."""
    keep = np.concatenate([[True], np.linalg.norm(np.diff(points, axis=0), axis=1) > 1e-6])
    pts = points[keep]
    cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    s = np.clip(s, 0.0, cum[-1])
    return np.stack([np.interp(s, cum, pts[:, 0]), np.interp(s, cum, pts[:, 1])], axis=1)


# --------------------------------------------------------------------------- files


def _read_bytes(path: Path) -> bytes:
    """Every file the reader loads goes through here."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise SceneFormatError(f"{path}: cannot read ({e.strerror or e})") from e


def _read_json(path: Path) -> object:
    try:
        return json.loads(_read_bytes(path))
    except ValueError as e:
        raise SceneFormatError(f"{path}: malformed JSON ({e})") from e


def _read_json_object(path: Path) -> dict:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise SceneFormatError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _decode_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    buf = np.frombuffer(_read_bytes(path), dtype=np.uint8)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if bgr is None:
        raise SceneFormatError(f"{path}: not a readable image (corrupt, truncated or empty)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except OSError as e:
        raise SceneFormatError(f"{path}: not a readable image ({e})") from e
    return height, width


def _check_size(path: Path, img: np.ndarray, size: tuple[int, int]) -> None:
    if img.shape[:2] != tuple(size):
        raise SceneFormatError(
            f"{path}: image is {img.shape[1]}x{img.shape[0]} pixels, the route's images are "
            f"{size[1]}x{size[0]}"
        )


def _count_frames(folder: Path, exts: Sequence[str]) -> tuple[int, str]:
    """Number of frames ``0000 .. N-1`` in ``folder`` and their extension; gaps are errors."""
    if not folder.is_dir():
        raise SceneFormatError(f"{folder}: missing folder")
    found: dict[int, str] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            m = _FRAME_RE.match(entry.name)
            if m and m.group(2) in exts:
                found[int(m.group(1))] = m.group(2)
    if not found:
        raise SceneFormatError(
            f"{folder}: no frames (expected 0000.{exts[0]}, 0001.{exts[0]}, ...)"
        )
    kinds = sorted(set(found.values()))
    if len(kinds) > 1:
        raise SceneFormatError(f"{folder}: mixed frame file types {kinds}; use one per folder")
    n = len(found)
    gap = next((i for i in range(n) if i not in found), None)
    if gap is not None:
        raise SceneFormatError(
            f"{folder / f'{gap:04d}.{kinds[0]}'}: missing frame ({folder.name}/ holds {n} files "
            f"numbered up to {max(found):04d})"
        )
    return n, kinds[0]


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _dumps(obj: object, indent: int | None = 1) -> str:
    return json.dumps(obj, sort_keys=True, indent=indent, default=_json_default)


def _write_json(path: Path, obj: object) -> None:
    path.write_text(_dumps(obj) + "\n", encoding="utf-8")


def _encode_png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), PNG_PARAMS)
    if not ok:
        raise RuntimeError("cv2 could not encode a PNG")
    return buf.tobytes()


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class _Images:
    """Where a route's images live: ``rgb_<view>/`` per view, or all views in ``rgb_full/``."""

    folders: dict[str, Path]
    exts: dict[str, str]
    count: int
    stacked: bool

    def path(self, view: str, i: int) -> Path:
        return self.folders[view] / f"{i:04d}.{self.exts[view]}"


def _scan_images(route: Path, views: Sequence[str]) -> _Images:
    """Find the image folders and check that every view holds the same frames."""
    folders = {v: route / f"rgb_{v}" for v in views}
    missing = [p for p in folders.values() if not p.is_dir()]
    full = route / FULL_DIR
    if missing and not full.is_dir():
        need = ", ".join(f"{p.name}/" for p in folders.values())
        raise SceneFormatError(f"{missing[0]}: missing view folder (need {need} or {FULL_DIR}/)")
    if missing:
        unknown = [v for v in views if v not in FULL_ORDER]
        if unknown:
            raise SceneFormatError(f"{full}: holds {FULL_ORDER}, not view {unknown[0]!r}")
        n, ext = _count_frames(full, IMAGE_EXTS)
        return _Images({v: full for v in views}, {v: ext for v in views}, n, stacked=True)
    counts = {v: _count_frames(p, IMAGE_EXTS) for v, p in folders.items()}
    if len({n for n, _ in counts.values()}) > 1:
        held = ", ".join(f"rgb_{v}/ {n}" for v, (n, _) in counts.items())
        raise SceneFormatError(f"{route}: view folders hold different frame counts ({held})")
    n = next(iter(counts.values()))[0]
    return _Images(folders, {v: ext for v, (_, ext) in counts.items()}, n, stacked=False)


def _probe_size(images: _Images, views: Sequence[str]) -> tuple[int, int]:
    """(height, width) of one view, from the headers of frame 0."""
    if images.stacked:
        path = images.path(views[0], 0)
        height, width = _image_size(path)
        if height % len(FULL_ORDER):
            raise SceneFormatError(
                f"{path}: height {height} is not {len(FULL_ORDER)} stacked views {FULL_ORDER}"
            )
        return height // len(FULL_ORDER), width
    paths = [images.path(v, 0) for v in views]
    size = _image_size(paths[0])
    for path in paths[1:]:
        other = _image_size(path)
        if other != size:
            raise SceneFormatError(
                f"{path}: image is {other[1]}x{other[0]} pixels, {paths[0]} is {size[1]}x{size[0]}"
            )
    return size


# --------------------------------------------------------------------------- instructions


@dataclass
class _Records:
    """Raw instruction records of one route, each with where it came from (for messages)."""

    nav: list[tuple[str, dict]] = field(default_factory=list)
    notices: list[tuple[str, dict]] = field(default_factory=list)


def _read_nav(path: Path) -> list[tuple[str, dict]]:
    """``navigation_instruction_list.txt``: one JSON object per line."""
    try:
        text = _read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise SceneFormatError(f"{path}: not UTF-8 text ({e})") from e
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise SceneFormatError(f"{path}:{n}: malformed JSON line ({e})") from e
        if not isinstance(rec, dict):
            raise SceneFormatError(f"{path}:{n}: expected a JSON object per line")
        records.append((f"{path}:{n}", rec))
    return records


def _read_notices(path: Path) -> dict[str, list[tuple[str, dict]]]:
    """``notice_instruction_list.json``: route path -> list of notice records."""
    data = _read_json_object(path)
    if not all(isinstance(v, list) for v in data.values()):
        raise SceneFormatError(f"{path}: expected an object mapping route paths to lists")
    return {
        route: [(f"{path}[{route!r}][{k}]", rec) for k, rec in enumerate(entries)]
        for route, entries in data.items()
    }


def _root_records(root: Path) -> dict[Path, _Records]:
    """Dataset-level instruction files, grouped by the route folder they name."""
    grouped: dict[Path, _Records] = {}
    if (root / NAV_FILE).is_file():
        for where, rec in _read_nav(root / NAV_FILE):
            if not isinstance(rec.get("route_path"), str):
                raise SceneFormatError(f"{where}: missing 'route_path'")
            grouped.setdefault((root / rec["route_path"]).resolve(), _Records()).nav.append(
                (where, rec)
            )
    if (root / NOTICE_FILE).is_file():
        for route, entries in _read_notices(root / NOTICE_FILE).items():
            grouped.setdefault((root / route).resolve(), _Records()).notices.extend(entries)
    return grouped


def _route_records(route: Path, shared: Mapping[Path, _Records] | None) -> _Records:
    """A route's own instruction files, else its records in the dataset-level files."""
    own_nav, own_notice = route / NAV_FILE, route / NOTICE_FILE
    if shared is None and not (own_nav.is_file() and own_notice.is_file()):
        shared = _root_records(route.parent)
    fallback = (shared or {}).get(route.resolve(), _Records())
    nav = _read_nav(own_nav) if own_nav.is_file() else fallback.nav
    if own_notice.is_file():
        notices = [e for entries in _read_notices(own_notice).values() for e in entries]
    else:
        notices = fallback.notices
    return _Records(nav, notices)


def _load_templates(path: PathLike) -> dict[int, list[str]]:
    """LMDrive's ``instruction_dict.json``: instruction id -> paraphrase templates."""
    path = Path(path)
    data = _read_json_object(path)
    try:
        return {int(k): [str(t) for t in v] for k, v in data.items()}
    except (TypeError, ValueError) as e:
        raise SceneFormatError(f"{path}: expected {{id: [template, ...]}} ({e})") from e


def _category(instruction_id: int, rule: str) -> str:
    """Category from LMDrive's id ranges, else from the rule name ("Turn-01-L" -> turn)."""
    for last, name in _CATEGORY_LAST_ID:
        if 0 <= instruction_id <= last:
            return name
    prefix = rule.split("-")[0].lower()
    return prefix if prefix in INSTRUCTION_CATEGORIES else "other"


def _text(rec: dict, args: dict, templates: Mapping[int, list[str]] | None) -> str:
    """Our ``text`` key, else LMDrive's first template with its placeholders filled, else the rule."""
    if "text" in rec:
        return str(rec["text"])
    options = (templates or {}).get(int(rec["instruction_id"]))
    if not options:
        return str(rec.get("instruction", ""))
    text = options[0]
    for placeholder, key in _PLACEHOLDERS:
        if key in args:
            text = text.replace(placeholder, str(args[key]))
    return text


def _truthy(value: object) -> bool:
    return str(value).strip().lower() in ("true", "1")


def _instruction(rec: dict, templates: Mapping[int, list[str]] | None) -> Instruction:
    iid = int(rec["instruction_id"])
    if isinstance(rec.get("args"), dict):
        args = dict(rec["args"])
    else:
        args = dict(zip(_ARG_NAMES, rec.get("instruction_args") or [], strict=False))
    return Instruction(
        text=_text(rec, args, templates),
        instruction_id=iid,
        category=str(rec.get("category") or _category(iid, str(rec.get("instruction", "")))),
        args=args,
        misleading=_truthy(rec.get("bad_case", False)),
    )


def _span(
    where: str, rec: dict, templates: Mapping[int, list[str]] | None, n: int, notice: bool
) -> InstructionSpan:
    """An instruction record as a span; notices (``frame_id``) last one frame unless stated."""
    start_key = "frame_id" if notice and "start_frame" not in rec else "start_frame"
    try:
        start = int(rec[start_key])
        end = int(rec.get("end_frame", start))
        ins = _instruction(rec, templates)
    except (KeyError, TypeError, ValueError) as e:
        raise SceneFormatError(f"{where}: bad instruction record ({e!r})") from e
    if not 0 <= start <= end < n:
        raise SceneFormatError(f"{where}: frames {start}..{end} outside the route's 0..{n - 1}")
    return InstructionSpan(ins, start, end)


def _span_key(span: InstructionSpan) -> tuple:
    return span.start_frame, span.end_frame, span.instruction.instruction_id, span.instruction.text


# --------------------------------------------------------------------------- measurements


def _num(raw: dict, key: str, path: Path) -> float:
    try:
        return float(raw[key])
    except KeyError as e:
        raise SceneFormatError(f"{path}: missing key {key!r}") from e
    except (TypeError, ValueError) as e:
        raise SceneFormatError(f"{path}: key {key!r} is not a number ({raw[key]!r})") from e


def _ego_pose(raw: dict, path: Path) -> tuple[float, float, float]:
    """World x, y and contract theta of an LMDrive measurement (CARLA location, compass)."""
    compass = _num(raw, "theta", path)
    compass = 0.0 if math.isnan(compass) else compass  # as LMDrive's loaders
    return _num(raw, "x", path), -_num(raw, "y", path), _compass_to_theta(compass)


def _measurements_from_dict(d: dict, path: Path) -> Measurements:
    """Inverse of :meth:`Measurements.to_dict`."""
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
        )
    except (KeyError, TypeError, ValueError) as e:
        raise SceneFormatError(f"{path}: bad {LMGD_KEY!r} entry ({e!r})") from e


def _route_waypoints(raw: dict, theta: float, speed: float, path: Path) -> np.ndarray:
    """Sample ``future_waypoints`` (a route path) at arc length ``speed * t`` ahead of the ego."""
    try:
        # [gps_x (north), gps_y (east), option] relative to the ego's own gps position -> east/north.
        nodes = np.array([[float(p[1]), float(p[0])] for p in raw["future_waypoints"]])
        origin = np.array([float(raw["gps_y"]), float(raw["gps_x"])])
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise SceneFormatError(f"{path}: bad 'future_waypoints' or gps keys ({e!r})") from e
    ego = _to_ego(nodes - origin, theta)
    # The planner keeps the last node passed until the next is reached: drop nodes behind the ego.
    ahead = np.flatnonzero(ego[:, 0] > 0)
    path_pts = np.concatenate([np.zeros((1, 2)), ego[ahead[0] :] if ahead.size else ego[:0]])
    return _along(path_pts, speed * np.asarray(WAYPOINT_TIMES))


def _light_name(sta: object) -> str:
    """``int(carla.TrafficLightState)`` -> contract light state (off / unknown -> "none")."""
    if isinstance(sta, int) and 0 <= sta < len(CARLA_LIGHT_STATES):
        return CARLA_LIGHT_STATES[sta]
    return "none"


def _light_state(raw: dict, actors: dict) -> str:
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
    fwd, left = _to_ego(d, theta)[0]
    vx, vy = _to_ego([float(vel[0]), -float(vel[1])], theta)[0]
    box = actor.get("box") or [LIGHT_FOOTPRINT / 2, LIGHT_FOOTPRINT / 2]  # half extents
    return SceneObject(
        cls=cls,
        x=float(fwd),
        y=float(left),
        yaw=_wrap(math.atan2(-float(ori[1]), float(ori[0])) - theta),
        length=2 * float(box[0]),
        width=2 * float(box[1]),
        height=2 * float(box[2]) if len(box) > 2 else DEFAULT_HEIGHT[cls],
        vx=float(vx),
        vy=float(vy),
        state=_light_name(actor.get("sta")) if cls == "traffic_light" else "",
    )


def _objects(actors: dict, pose: tuple[float, float, float], path: Path) -> tuple[SceneObject, ...]:
    objects = []
    for actor_id, actor in actors.items():
        try:
            obj = _actor_object(actor, pose)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise SceneFormatError(f"{path}: bad actor {actor_id!r} ({e!r})") from e
        if obj is not None:
            objects.append(obj)
    return tuple(objects)


def _weather_name(weather_id: object) -> str:
    if weather_id is None:
        return "unknown"
    wid = int(weather_id)
    return WEATHER_NAMES[wid] if 0 <= wid < len(WEATHER_NAMES) else f"weather_{wid}"


def _tags_from_name(name: str) -> dict:
    """Town and weather from an LMDrive route folder name (``routes_town01_short_w3_...``)."""
    tags: dict = {"source": "lmdrive"}
    town, weather = re.search(r"town(\d+)", name), re.search(r"_w(\d+)_", name)
    if town:
        tags["town_id"] = int(town.group(1))
    if weather:
        tags["weather_id"] = int(weather.group(1))
    return tags


def _read_meta(route: Path) -> dict:
    """Our ``lmgd_scene.json`` (name, fps, views, size, tags), or {} for recorded data."""
    path = route / META_FILE
    if not path.is_file():
        return {}
    meta = _read_json_object(path)
    try:
        return {
            "name": str(meta["name"]),
            "fps": float(meta["fps"]),
            "views": tuple(str(v) for v in meta["views"]),
            "size": (int(meta["size"][0]), int(meta["size"][1])),
            "tags": dict(meta["tags"]),
        }
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise SceneFormatError(f"{path}: bad scene metadata ({e!r})") from e


# --------------------------------------------------------------------------- the scene


class LMDriveScene:
    """One LMDrive-format route folder as a contract :class:`Scene`; frames are read on demand.

    Made by :func:`open_route` and :func:`open_root`. Opening checks the folders, frame counts and instruction files; images and measurements are
    read (and checked) only when a frame is asked for.
    """

    def __init__(
        self,
        route_dir: PathLike,
        *,
        records: _Records,
        templates: Mapping[int, list[str]] | None = None,
        expected: tuple[int, str] | None = None,
    ):
        self.root = Path(route_dir)
        meta = _read_meta(self.root)
        self.name: str = meta.get("name", self.root.name)
        self.fps: float = meta.get("fps", FPS)
        self.views: tuple[str, ...] = meta.get("views", VIEWS)
        self._tags: dict = meta["tags"] if meta else _tags_from_name(self.root.name)
        self._images = _scan_images(self.root, self.views)
        self._n = self._images.count
        self._check_count(self.root / MEASUREMENTS_DIR, required=True)
        self._has_actors = self._check_count(self.root / ACTORS_DIR, required=False)
        if expected is not None and expected[0] != self._n:
            raise SceneFormatError(
                f"{expected[1]}: says {expected[0]} frames, {self.root} holds {self._n}"
            )
        self.size: tuple[int, int] = meta.get("size") or _probe_size(self._images, self.views)
        self._nav = sorted(
            (_span(w, r, templates, self._n, False) for w, r in records.nav), key=_span_key
        )
        notices = [_span(w, r, templates, self._n, True) for w, r in records.notices]
        self._spans = sorted(self._nav + notices, key=_span_key)
        if templates is None and any("text" not in r for _, r in records.nav + records.notices):
            log.warning(
                "%s: no instruction_dict given; instruction texts are rule names", self.root
            )
        log.debug("opened %s: %d frames, views %s", self.root, self._n, self.views)

    def _check_count(self, folder: Path, required: bool) -> bool:
        """Whether ``folder`` exists; if it does, it must hold as many frames as the images."""
        if not required and not folder.is_dir():
            return False
        n, _ = _count_frames(folder, ("json",))
        if n != self._n:
            raise SceneFormatError(f"{folder}: holds {n} frames, the image folders hold {self._n}")
        return True

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"LMDriveScene({str(self.root)!r}, frames={self._n})"

    @property
    def tags(self) -> dict:
        return dict(self._tags)

    def instructions(self) -> list[InstructionSpan]:
        """Navigation and notice spans, sorted by (start, end, id, text)."""
        return list(self._spans)

    def _frame(self, i: int) -> int:
        if not 0 <= i < self._n:
            raise IndexError(f"frame {i} outside 0..{self._n - 1} of {self.root}")
        return int(i)

    def images(self, i: int) -> dict[str, np.ndarray]:
        """Images of frame ``i``: view name -> (H, W, 3) uint8 RGB."""
        i = self._frame(i)
        if self._images.stacked:
            return self._stacked_images(i)
        out = {}
        for view in self.views:
            path = self._images.path(view, i)
            out[view] = _decode_image(path)
            _check_size(path, out[view], self.size)
        return out

    def _stacked_images(self, i: int) -> dict[str, np.ndarray]:
        """Crop the views out of ``rgb_full`` (front, left, right, rear stacked vertically)."""
        path = self._images.path(self.views[0], i)
        full = _decode_image(path)
        h, w = self.size
        _check_size(path, full, (h * len(FULL_ORDER), w))
        return {
            v: np.ascontiguousarray(full[FULL_ORDER.index(v) * h : (FULL_ORDER.index(v) + 1) * h])
            for v in self.views
        }

    def _raw(self, i: int) -> tuple[dict, Path]:
        path = self.root / MEASUREMENTS_DIR / f"{i:04d}.json"
        return _read_json_object(path), path

    def measurements(self, i: int) -> Measurements:
        i = self._frame(i)
        raw, path = self._raw(i)
        if LMGD_KEY in raw:
            return _measurements_from_dict(raw[LMGD_KEY], path)
        return self._convert(i, raw, path)

    def _convert(self, i: int, raw: dict, path: Path) -> Measurements:
        """Contract measurements from LMDrive keys (see the module docstring)."""
        pose = _ego_pose(raw, path)
        actors_path = self.root / ACTORS_DIR / f"{i:04d}.json"
        actors = _read_json_object(actors_path) if self._has_actors else {}
        instruction, completed = self._instruction_at(i)
        return Measurements(
            frame=i,
            x=pose[0],
            y=pose[1],
            theta=pose[2],
            speed=_num(raw, "speed", path),
            steer=_num(raw, "steer", path),
            throttle=_num(raw, "throttle", path),
            brake=_num(raw, "brake", path),  # LMDrive stores the expert's bool
            waypoints=self._waypoints(i, raw, pose, path),
            light_state=_light_state(raw, actors),
            is_junction=bool(raw.get("is_junction", False)),
            objects=_objects(actors, pose, actors_path),
            instruction=instruction,
            instruction_completed=completed,
            weather=_weather_name(raw.get("weather_id", self._tags.get("weather_id"))),
        )

    def _waypoints(
        self, i: int, raw: dict, pose: tuple[float, float, float], path: Path
    ) -> np.ndarray:
        """The ego-frame positions at ``WAYPOINT_TIMES`` (t + 0.2 .. 0.8 s).

        * When the route holds frame ``i + t * fps`` for every t: the recorded poses of those
          later frames (what LMDrive's loaders do, at their own 0.5 s spacing).
        * Near the end of the route: ``future_waypoints`` (the expert's planned path) walked at the
          current speed, i.e. assuming constant speed along the route for 0.8 s.
        * Without ``future_waypoints``: later frames clamped to the last one (LMDrive's rule).
        """
        steps = [round(t * self.fps) for t in WAYPOINT_TIMES]
        if i + steps[-1] >= self._n and raw.get("future_waypoints"):
            return _route_waypoints(raw, pose[2], _num(raw, "speed", path), path).astype(np.float32)
        world = np.array([self._position(min(i + s, self._n - 1)) for s in steps])
        return _to_ego(world - pose[:2], pose[2]).astype(np.float32)

    def _position(self, i: int) -> tuple[float, float]:
        raw, path = self._raw(i)
        x, y, _ = _ego_pose(raw, path)
        return x, y

    def _instruction_at(self, i: int) -> tuple[Instruction, bool]:
        """The most recently issued navigation span covering ``i``; completed at its last frame."""
        active = [s for s in self._nav if s.start_frame <= i <= s.end_frame]
        if not active:
            return NO_INSTRUCTION, False
        span = max(active, key=lambda s: (s.start_frame, -s.end_frame))
        return span.instruction, i == span.end_frame


def open_route(
    route_dir: PathLike,
    *,
    instruction_dict: PathLike | None = None,
    expected_frames: int | None = None,
) -> LMDriveScene:
    """Open one route folder lazily.

    ``instruction_dict``: LMDrive's ``leaderboard/leaderboard/envs/instruction_dict.json``, used to
    turn instruction ids into text for records that carry none (else the rule name is the text).
    ``expected_frames``: the frame count the caller expects (a mismatch is a
    :class:`SceneFormatError`).
    """
    route = Path(route_dir)
    if not route.is_dir():
        raise SceneFormatError(f"{route}: route folder not found")
    templates = _load_templates(instruction_dict) if instruction_dict is not None else None
    expected = None if expected_frames is None else (expected_frames, "expected_frames")
    return LMDriveScene(
        route, records=_route_records(route, None), templates=templates, expected=expected
    )


def _read_index(index: Path) -> list[tuple[str, str, int]]:
    """``dataset_index.txt`` -> [(where, route_dir, n_frames)]."""
    if not index.is_file():
        raise SceneFormatError(f"{index}: dataset index not found")
    entries = []
    for n, line in enumerate(
        _read_bytes(index).decode("utf-8", errors="replace").splitlines(), start=1
    ):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise SceneFormatError(f"{index}:{n}: expected '<route_dir>/ <n_frames>', got {line!r}")
        entries.append((f"{index}:{n}", parts[0], int(parts[1])))
    return entries


def open_root(root: PathLike, *, instruction_dict: PathLike | None = None) -> list[LMDriveScene]:
    """Open every route listed in ``<root>/dataset_index.txt`` (lazily), checking frame counts."""
    root = Path(root)
    entries = _read_index(root / INDEX_FILE)
    templates = _load_templates(instruction_dict) if instruction_dict is not None else None
    shared = _root_records(root)
    scenes = []
    for where, rel, n in entries:
        route = root / rel
        if not route.is_dir():
            raise SceneFormatError(f"{where}: route folder {route} not found")
        records = _route_records(route, shared)
        scenes.append(
            LMDriveScene(route, records=records, templates=templates, expected=(n, where))
        )
    log.info("opened %d routes under %s", len(scenes), root)
    return scenes


# --------------------------------------------------------------------------- the writer


def _lmdrive_actors(m: Measurements) -> tuple[dict, int]:
    """Objects as actors_data (ids 1..N, CARLA coordinates) and the id of the governing light.

    The governing light is the nearest light ahead whose state is ``m.light_state`` (-1 if none).
    """
    actors, light_id, light_dist = {}, -1, math.inf
    for k, o in enumerate(m.objects, start=1):
        if o.cls not in ACTOR_TYPES:
            log.warning(
                "frame %d: object class %r has no LMDrive type; not written", m.frame, o.cls
            )
            continue
        (dx, dy), (vx, vy) = _from_ego([[o.x, o.y], [o.vx, o.vy]], m.theta)
        heading = m.theta + o.yaw
        rec: dict = {
            "loc": [m.x + dx, -(m.y + dy), 0.0],
            "ori": [math.cos(heading), -math.sin(heading), 0.0],
            "vel": [vx, -vy, 0.0],
            "tpe": ACTOR_TYPES.index(o.cls),
        }
        if o.cls == "traffic_light":
            states = CARLA_LIGHT_STATES
            rec["sta"] = states.index(o.state) if o.state in states else CARLA_LIGHT_OFF
            rec.update(
                taigger_loc=[0.0, 0.0, 0.0],
                trigger_ori=rec["ori"],
                trigger_box=[o.length / 2, o.width / 2],
            )
            dist = math.hypot(o.x, o.y)
            if o.state == m.light_state and o.x > 0 and dist < light_dist:
                light_id, light_dist = k, dist
        else:
            rec["box"] = [o.length / 2, o.width / 2]
        actors[str(k)] = rec
    return actors, light_id


def _lmdrive_measurements(m: Measurements, light_id: int) -> dict:
    """LMDrive's measurement keys for ``m``, plus ``lmgd`` (the exact contract dict).

    Stand-ins where the contract has no equivalent: ``future_waypoints`` are the 4 contract
    waypoints (not the planner's route), ``x_command``/``far_node`` the last and ``near_node``
    the first of them, ``command`` LANEFOLLOW, ``target_speed`` the current speed. The CARLA
    ``weather`` parameter dict is not written (``weather_id`` is, -1 for non-CARLA weathers).
    """
    wps = _from_ego(m.waypoints, m.theta) + (m.x, m.y)
    future = [[float(n), float(e), ROAD_OPTION_LANEFOLLOW] for e, n in wps]  # gps: north, east
    near, far = future[0], future[-1]
    brake_light = light_id != -1 and m.light_state in ("red", "yellow")
    return {
        "gps_x": m.y, "gps_y": m.x, "x": m.x, "y": -m.y, "theta": _theta_to_compass(m.theta),
        "speed": m.speed, "target_speed": m.speed, "steer": m.steer, "throttle": m.throttle,
        "brake": m.brake, "command": ROAD_OPTION_LANEFOLLOW, "gt_command": ROAD_OPTION_LANEFOLLOW,
        "x_command": far[0], "y_command": far[1], "far_node_x": far[0], "far_node_y": far[1],
        "near_node_x": near[0], "near_node_y": near[1], "future_waypoints": future,
        "weather_id": WEATHER_NAMES.index(m.weather) if m.weather in WEATHER_NAMES else -1,
        "is_junction": m.is_junction, "affected_light_id": light_id,
        "should_slow": 0, "should_brake": int(m.brake > 0),
        "is_red_light_present": [light_id] if brake_light else [],
        "is_vehicle_present": [], "is_bike_present": [], "is_lane_vehicle_present": [],
        "is_junction_vehicle_present": [], "is_pedestrian_present": [], "is_stop_sign_present": [],
        LMGD_KEY: m.to_dict(),
    }  # fmt: skip


def _instruction_fields(ins: Instruction) -> dict:
    """LMDrive's instruction keys (rule name = category) plus our exact ``text``/``category``/``args``."""
    return {
        "instruction": ins.category.capitalize(),
        "instruction_id": ins.instruction_id,
        "instruction_args": [ins.args[k] for k in takewhile(lambda k: k in ins.args, _ARG_NAMES)],
        "bad_case": str(ins.misleading),
        "text": ins.text,
        "category": ins.category,
        "args": ins.args,
    }


def _write_instructions(scene: Scene, out: Path, route_path: str) -> None:
    """Navigation spans as ``navigation_instruction_list.txt``, notices as the JSON file."""
    tags, n = scene.tags, len(scene)
    nav, notices = [], []
    for span in sorted(scene.instructions(), key=_span_key):
        rec = _instruction_fields(span.instruction)
        rec.update(route_path=route_path, start_frame=span.start_frame, end_frame=span.end_frame)
        if span.instruction.category == "notice":
            notices.append({**rec, "frame_id": span.start_frame})
        else:
            rec.update(
                town_id=tags.get("town_id", -1),
                weather_id=tags.get("weather_id", -1),
                route_frames=n,
            )
            nav.append(rec)
    (out / NAV_FILE).write_text(
        "".join(_dumps(r, indent=None) + "\n" for r in nav), encoding="utf-8"
    )
    _write_json(out / NOTICE_FILE, {route_path: notices})


def _write_frame(scene: Scene, i: int, out: Path) -> None:
    images = scene.images(i)
    h, w = scene.size
    for view in scene.views:
        img = np.asarray(images[view])
        if img.shape != (h, w, 3) or img.dtype != np.uint8:
            raise SceneFormatError(
                f"scene {scene.name!r} frame {i} view {view!r}: image {img.shape} {img.dtype}, "
                f"expected ({h}, {w}, 3) uint8"
            )
        (out / f"rgb_{view}" / f"{i:04d}.png").write_bytes(_encode_png(img))
    m = scene.measurements(i)
    actors, light_id = _lmdrive_actors(m)
    _write_json(out / MEASUREMENTS_DIR / f"{i:04d}.json", _lmdrive_measurements(m, light_id))
    _write_json(out / ACTORS_DIR / f"{i:04d}.json", actors)


def _write_contents(scene: Scene, out: Path, route_name: str, on_frame: Callable[[int], None] | None) -> None:
    for sub in [f"rgb_{v}" for v in scene.views] + [MEASUREMENTS_DIR, ACTORS_DIR]:
        (out / sub).mkdir(parents=True)
    meta = {
        "name": scene.name,
        "fps": scene.fps,
        "views": list(scene.views),
        "size": list(scene.size),
        "tags": scene.tags,
    }
    _write_json(out / META_FILE, meta)
    for i in range(len(scene)):
        _write_frame(scene, i, out)
        if on_frame is not None:
            on_frame(i)
    _write_instructions(scene, out, f"{route_name}/")


def write_route(scene: Scene, out_dir: PathLike, *, overwrite: bool = False,
                on_frame: Callable[[int], None] | None = None) -> Path:
    """Export any contract scene as an LMDrive-format route folder; returns ``out_dir``.

    ``on_frame(i)`` is called after each frame is written (for progress bars).

    Written into ``<out_dir>.partial`` and renamed when complete, so a failed write leaves
    nothing. Deterministic: the same scene gives byte-identical files (sorted JSON keys, PNG
    with fixed settings).
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise BadInputError(f"{out}: already exists (pass overwrite=True to replace it)")
    with atomic_path(out, directory=True) as partial:
        _write_contents(scene, partial, out.name, on_frame)
    log.info("wrote %s (%d frames) to %s", scene.name, len(scene), out)
    return out


def write_index(root: PathLike, route_dirs: Iterable[PathLike]) -> Path:
    """Write ``<root>/dataset_index.txt`` for route folders inside ``root``; returns its path.

    ``route_dirs`` are paths as given to :func:`open_route` (absolute or relative to the current
    directory). Frame counts are those of each route's ``measurements/``.
    """
    root = Path(root)
    lines = []
    for route_dir in route_dirs:
        route = Path(route_dir)
        try:
            rel = route.resolve().relative_to(root.resolve())
        except ValueError as e:
            raise BadInputError(f"{route}: not inside the dataset root {root}") from e
        n, _ = _count_frames(route / MEASUREMENTS_DIR, ("json",))
        lines.append(f"{rel.as_posix()}/ {n}\n")
    return write_bytes(root / INDEX_FILE, "".join(lines).encode("utf-8"))
