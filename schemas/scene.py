"""The seed-scene contract shared by every scene source.

A *scene* is one recorded drive: per frame, one RGB image per view plus the measurements below.
Sources (the procedural world, LMDrive-format folders) return :class:`Scene` objects whose frames
are produced lazily, so a route of thousands of frames is never held in memory whole.

Coordinate conventions (documented once, used everywhere):

* World frame: x east, y north, metres; ``theta`` is the ego heading in radians, counter-clockwise
  from +x.
* Ego frame: x forward, y left, metres (right-handed, ISO 8855). Waypoints and objects are given
  in the ego frame of the frame they belong to.
* Waypoints: the ego's future positions at t+0.2, 0.4, 0.6 and 0.8 s (``WAYPOINT_TIMES``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np

VIEWS: tuple[str, ...] = ("left", "front", "right")
VIEW_YAW_DEG: dict[str, float] = {
    "left": -60.0,
    "front": 0.0,
    "right": 60.0,
}  # CARLA sign: + is right
CAMERA_FOV_DEG = 100.0
# The centre view: the front camera's centre quarter (width / 4) at full image size, as LMDrive's
# ``rgb_center`` is a centre crop of the front camera: traffic lights are a pixel or two in the
# 64-px front view, plain in this one. Seen by the vision encoder only, never generated.
CENTER_VIEW = "center"
CENTER_FOV_DEG = 2.0 * float(np.degrees(np.arctan(np.tan(np.radians(CAMERA_FOV_DEG / 2)) / 4)))


def center_of_front(front: np.ndarray) -> np.ndarray:
    """The centre view cut from a front camera image (H, W, ...): its centre quarter of the height
    and width, to be resized to the model's image size (the sharper, the larger ``front``)."""
    h, w = front.shape[:2]
    return front[3 * h // 8 : h - 3 * h // 8, 3 * w // 8 : w - 3 * w // 8]


CAMERA_POSITION = (1.3, 0.0, 2.3)  # x forward, y left, z up, metres from the ego origin
FPS = 10.0
WAYPOINT_TIMES: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
INSTRUCTION_CATEGORIES: tuple[str, ...] = ("turn", "follow", "notice", "other")
TURNS: tuple[str, ...] = ("left", "straight", "right")  # what a route can do at a junction
# What an instruction asks for, by its type (``Instruction.args["type"]``): a turn at the next
# junction or "stop"; every other type asks for no maneuver.
_MANEUVER_OF_TYPE: dict[str, str] = {
    "turn_left": "left", "turn_left_dist": "left", "turn_right": "right",
    "turn_right_dist": "right", "go_straight": "straight", "go_straight_dist": "straight",
    "halt": "stop",
}  # fmt: skip
# The instruction type asking plainly (without a distance) for each maneuver.
TYPE_ASKING_FOR: dict[str, str] = {
    "left": "turn_left", "straight": "go_straight", "right": "turn_right", "stop": "halt",
}  # fmt: skip
OBJECT_CLASSES: tuple[str, ...] = ("vehicle", "pedestrian", "traffic_light")
LIGHT_STATES: tuple[str, ...] = ("none", "red", "yellow", "green")
# the weathers a scene can be tagged with: the procedural world's presets, CARLA-style names
WEATHERS: tuple[str, ...] = ("clear_noon", "cloudy", "rain", "fog", "sunset", "night")


def maneuver_asked(instruction_type: str) -> str | None:
    """The maneuver an instruction of this type asks for: one of ``TURNS``, "stop", or None."""
    return _MANEUVER_OF_TYPE.get(instruction_type)


def turn_asked(instruction_type: str) -> str | None:
    """The turn (one of ``TURNS``) an instruction of this type asks for, else None (a halt too)."""
    maneuver = maneuver_asked(instruction_type)
    return maneuver if maneuver in TURNS else None


@dataclass(frozen=True)
class Instruction:
    """A natural-language instruction and what it means."""

    text: str
    instruction_id: int
    category: str
    args: dict = field(default_factory=dict)
    misleading: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> Instruction:
        return Instruction(
            text=str(d["text"]),
            instruction_id=int(d["instruction_id"]),
            category=str(d["category"]),
            args=dict(d.get("args") or {}),
            misleading=bool(d.get("misleading", False)),
        )


@dataclass(frozen=True)
class SceneObject:
    """One object around the ego, in the ego frame (enough for a BEV detection target)."""

    cls: str
    x: float
    y: float
    yaw: float
    length: float
    width: float
    height: float
    vx: float = 0.0
    vy: float = 0.0
    state: str = ""  # traffic lights: red / yellow / green

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> SceneObject:
        return SceneObject(**{k: d[k] for k in SceneObject.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class Measurements:
    """Per-frame ground truth except the images."""

    frame: int
    x: float
    y: float
    theta: float
    speed: float
    steer: float
    throttle: float
    brake: float
    waypoints: np.ndarray  # (4, 2) float32, ego frame
    light_state: str  # state of the traffic light governing the ego, or "none"
    is_junction: bool
    objects: tuple[SceneObject, ...]
    instruction: Instruction
    instruction_completed: bool
    weather: str
    # the ego's controls from this frame to the next were not its driver's own (a recovery drive's
    # perturbation, scenes.procedural.recovery): the waypoints of the frames before show them
    perturbed: bool = False
    # metres from the ego's front to the governing light's stop line (negative just past it);
    # 0 where only "within LMDrive's trigger range" is known (``is_red_light_present``), inf where
    # nothing is (no light, or not recorded)
    light_distance: float = float("inf")
    # where the ego stands in its route's lane: metres left of the lane centre and heading
    # radians left of the lane's direction; NaN where there is no lane to keep (a junction's box;
    # a corner's keeps its lane) or it is not recorded
    lane_offset: float = float("nan")
    lane_heading: float = float("nan")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["light_distance"] = (
            float(self.light_distance) if np.isfinite(self.light_distance) else None
        )
        for key in ("lane_offset", "lane_heading"):
            d[key] = None if np.isnan(d[key]) else round(float(d[key]), 4)
        d["waypoints"] = np.asarray(self.waypoints, dtype=np.float64).round(4).tolist()
        d["objects"] = [o.to_dict() for o in self.objects]
        d["instruction"] = self.instruction.to_dict()
        return d


@dataclass(frozen=True)
class InstructionSpan:
    """An instruction active over frames ``[start_frame, end_frame]`` (inclusive)."""

    instruction: Instruction
    start_frame: int
    end_frame: int


class Scene(Protocol):
    """A recorded drive; frames are produced lazily."""

    name: str
    views: tuple[str, ...]
    fps: float
    size: tuple[int, int]  # (height, width) of every image

    def __len__(self) -> int: ...

    def measurements(self, i: int) -> Measurements: ...

    def images(self, i: int) -> dict[str, np.ndarray]:
        """Images of frame ``i``: view name -> (H, W, 3) uint8 RGB."""
        ...

    def instructions(self) -> list[InstructionSpan]: ...

    @property
    def tags(self) -> dict:
        """Scene-level facts for curation (town seed, weather, ...)."""
        ...
