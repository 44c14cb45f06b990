"""Our model as a CARLA leaderboard agent, for LMDrive's LangAuto benchmark.

Run it as LMDrive runs its own agent, with this file as the agent and a checkpoint as its
config::

    leaderboard/leaderboard/leaderboard_evaluator.py --agent closedloop/carla_agent.py \\
        --agent-config demo    # or a checkpoint directory

The agent keeps LMDrive's sensor rig for the cameras the model sees (``rgb_left``,
``rgb_front``, ``rgb_right``) plus ``gps``, ``imu`` and ``speed``, and LMDrive's timing: full
brake for the first 20 calls while the sensors warm up, then a plan on every second call (CARLA
ticks at 20 Hz, the model at 10 Hz) with the previous control held in between. Each plan goes
through :class:`~closedloop.model_driver.ModelDriver`. Instructions come from an instruction
source, ``(tick_data) -> str``; by default LMDrive's own planner (:class:`LMDriveInstructions`).

Neither ``carla`` nor the leaderboard is needed to import or test this module: without the
leaderboard the agent derives from a small stand-in base class, and without ``carla`` it returns
our :class:`~driving.control.Control` instead of ``carla.VehicleControl``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from typing import Any

import cv2
import numpy as np

from closedloop.model_driver import ModelDriver
from driving.control import Control
from lmgendrive.checkpoint import load_checkpoint
from lmgendrive.checkpoint_meta import check_readers
from scenes.lmdrive.conventions import compass_to_theta
from schemas.errors import BadInputError, ConfigError
from schemas.scene import CAMERA_FOV_DEG, CENTER_VIEW, VIEW_YAW_DEG, center_of_front

GPS_SCALE = (111324.60662786, 111319.490945)  # planner.py RoutePlanner.scale: lat, lon -> m N, E
WARMUP_CALLS = 20  # LMDrive brakes while the sensors warm up
CALLS_PER_PLAN = 2  # the simulator calls at 20 Hz, the model plans at 10 Hz
CAMERAS = {"left": "rgb_left", "front": "rgb_front", "right": "rgb_right"}  # view -> sensor id
CAMERA_SIZES = {"left": (400, 300), "front": (1200, 900), "right": (400, 300)}  # width, height

InstructionSource = Callable[[dict], str]

try:
    from leaderboard.autoagents.autonomous_agent import AutonomousAgent
except ImportError:  # no leaderboard (or no carla under it): the part of its interface we use

    class AutonomousAgent:
        """Stand-in for the leaderboard's base class, so the agent can be imported and fed
        recorded frames without CARLA: it calls ``setup`` and keeps the route it is given."""

        def __init__(self, path_to_conf_file: str):
            self._global_plan = None
            self._global_plan_world_coord = None
            self.setup(path_to_conf_file)

        def set_global_plan(self, global_plan_gps: list, global_plan_world_coord: list) -> None:
            """Keep the route, as the leaderboard gives it (gps and world coordinates)."""
            self._global_plan = global_plan_gps
            self._global_plan_world_coord = global_plan_world_coord

        def destroy(self) -> None:
            """Clean up after the route."""


def get_entry_point() -> str:
    """The agent class the leaderboard instantiates from this module."""
    return "LMGenDriveAgent"


def vehicle_control(control: Control) -> Any:
    """``control`` as a ``carla.VehicleControl`` where carla is installed, else as it is."""
    try:
        import carla
    except ImportError:
        return control
    return carla.VehicleControl(throttle=control.throttle, steer=control.steer, brake=control.brake)


def gps_to_metres(lat: float, lon: float) -> np.ndarray:
    """GNSS (lat, lon) -> metres (north, east), as LMDrive's ``RoutePlanner`` converts them."""
    return np.array([lat * GPS_SCALE[0], lon * GPS_SCALE[1]])


def _reading(input_data: Mapping, sensor_id: str, expected: str) -> Any:
    """The data of ``sensor_id`` in the leaderboard's ``{id: (frame, data)}``."""
    try:
        return input_data[sensor_id][1]
    except (KeyError, IndexError, TypeError) as exc:
        raise BadInputError(
            f"input_data has no reading for sensor {sensor_id!r}: expected (frame, {expected})"
        ) from exc


def _camera(input_data: Mapping, sensor_id: str) -> np.ndarray:
    image = _reading(input_data, sensor_id, "BGRA image")
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 4):
        shape = getattr(image, "shape", type(image).__name__)
        raise BadInputError(f"sensor {sensor_id!r}: expected a BGRA image (H, W, 4), got {shape}")
    if image.dtype != np.uint8:
        raise BadInputError(f"sensor {sensor_id!r}: expected uint8 pixels, got {image.dtype}")
    return image


def _values(input_data: Mapping, sensor_id: str, count: int, expected: str) -> np.ndarray:
    reading = _reading(input_data, sensor_id, expected)
    try:
        values = np.asarray(reading, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"sensor {sensor_id!r}: expected {expected}, got {reading!r}") from exc
    if values.size < count:
        raise BadInputError(f"sensor {sensor_id!r}: expected {expected}, got {reading!r}")
    return values


def read_sensors(input_data: Mapping) -> dict:
    """The tick data of one simulator call: the cameras as RGB (``rgb_left`` ...), ``gps`` in
    metres (north, east), ``speed`` m/s, ``compass`` (NaN read as 0, as LMDrive does) and
    ``pose`` (x east, y north, theta counter-clockwise from east)."""
    tick = {
        sid: cv2.cvtColor(_camera(input_data, sid), cv2.COLOR_BGRA2RGB) for sid in CAMERAS.values()
    }
    lat, lon = _values(input_data, "gps", 2, "[lat, lon, alt]")[:2]
    compass = _values(input_data, "imu", 7, "[accelerometer x3, gyroscope x3, compass]")[-1]
    compass = 0.0 if math.isnan(compass) else float(compass)
    speed = _reading(input_data, "speed", '{"speed": m/s}')
    if not isinstance(speed, Mapping) or "speed" not in speed:
        raise BadInputError(f"sensor 'speed': expected {{'speed': m/s}}, got {speed!r}")
    position = gps_to_metres(lat, lon)
    return tick | {
        "gps": position,
        "speed": float(speed["speed"]),
        "compass": compass,
        "pose": (float(position[1]), float(position[0]), compass_to_theta(compass)),
    }


class LMGenDriveAgent(AutonomousAgent):
    """Our model driving in CARLA through :class:`ModelDriver`.

    ``path_to_conf_file`` is a checkpoint name (``demo``) or directory; the device is picked at
    run time (``$LMGD_DEVICE``, else CUDA when available). ``instruction`` is a fixed instruction,
    an instruction source ``(tick_data) -> str`` (see :func:`read_sensors` for ``tick_data``), or
    None for LMDrive's own instructions (:class:`LMDriveInstructions`). ``max_speed`` (m/s) caps
    the speed the controller asks for; None keeps LMDrive's uncapped controller. Set it to the
    fastest speed of the checkpoint's training drives (the procedural expert's ``CRUISE_SPEED``
    for ``demo``; InterFuser's agent caps at 5 m/s). ``assisted`` drives as ``lmgd drive``'s
    ``model_assisted`` agent: the lane assist on the model's lane reader and InterFuser's red-light
    rule on its light reader (a checkpoint with both readers, ``jobs/train_readers.yaml``); off,
    LMDrive's agent: the waypoints and PID controllers alone.
    """

    max_speed: float | None = None
    assisted: bool = False

    def __init__(self, path_to_conf_file: str, instruction: str | InstructionSource | None = None):
        self.set_instruction_source(instruction)
        super().__init__(path_to_conf_file)

    def setup(self, path_to_conf_file: str) -> None:
        """Load the checkpoint (the leaderboard calls this once per route)."""
        if self.assisted:
            check_readers(path_to_conf_file, "model_assisted")
        self.model, self.identity = load_checkpoint(path_to_conf_file)
        self.driver = ModelDriver(
            self.model,
            max_speed=self.max_speed,
            light_rule=self.assisted,
            lane_assist="read" if self.assisted else None,
        )
        self.calls = 0
        self.control: Any = None
        self.last_plan = None

    def set_instruction_source(self, instruction: str | InstructionSource | None) -> None:
        """Drive under a fixed instruction, an instruction source ``(tick_data) -> str``, or
        (None) LMDrive's instructions."""
        if instruction is None:
            self.instruction_source: InstructionSource = LMDriveInstructions(self)
        elif isinstance(instruction, str):
            self.instruction_source = lambda tick_data: instruction
        else:
            self.instruction_source = instruction

    def sensors(self) -> list[dict]:
        """LMDrive's sensor rig, without the sensors the model does not use."""
        cameras = [
            {
                "type": "sensor.camera.rgb",
                "x": 1.3,
                "y": 0.0,
                "z": 2.3,
                "roll": 0.0,
                "pitch": 0.0,
                "yaw": VIEW_YAW_DEG[view],
                "width": CAMERA_SIZES[view][0],
                "height": CAMERA_SIZES[view][1],
                "fov": CAMERA_FOV_DEG,
                "id": sensor_id,
            }
            for view, sensor_id in CAMERAS.items()
        ]
        at_origin = {"x": 0.0, "y": 0.0, "z": 0.0, "roll": 0.0, "pitch": 0.0, "yaw": 0.0}
        return cameras + [
            {"type": "sensor.other.imu", **at_origin, "sensor_tick": 0.05, "id": "imu"},
            {"type": "sensor.other.gnss", **at_origin, "sensor_tick": 0.01, "id": "gps"},
            {"type": "sensor.speedometer", "reading_frequency": 20, "id": "speed"},
        ]

    def run_step(self, input_data: Mapping, timestamp: float) -> Any:
        """One simulator call (20 Hz): ``input_data`` maps sensor id -> (frame, data); the
        control to apply."""
        tick_data = read_sensors(input_data)
        call, self.calls = self.calls, self.calls + 1
        if call < WARMUP_CALLS:
            return vehicle_control(Control(throttle=0.0, brake=1.0, steer=0.0))
        if (call - WARMUP_CALLS) % CALLS_PER_PLAN:
            return self.control
        height, width = self.model.config.image_size
        views = {
            view: cv2.resize(tick_data[sid], (width, height), interpolation=cv2.INTER_AREA)
            for view, sid in CAMERAS.items()
        }
        if self.model.config.vision.sees_center:  # LMDrive's rgb_center: a crop at full size
            crop = center_of_front(tick_data[CAMERAS["front"]])
            views[CENTER_VIEW] = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA)
        instruction = self.instruction_source(tick_data)
        self.last_plan, control = self.driver.step(
            views, tick_data["speed"], tick_data["pose"], instruction
        )
        self.control = vehicle_control(control)
        return self.control

    def destroy(self) -> None:
        """Release the model."""
        self.model = self.driver = None
        super().destroy()


class LMDriveInstructions:
    """LMDrive's LangAuto instructions for ``agent``, as LMDrive's agent makes them: its
    ``RoutePlanner`` follows the route, its ``InstructionPlanner`` words the next command, and when
    that changes a misleading instruction is given instead with probability 0.2, for 20 plans.

    Needs LMDrive's leaderboard (its ``leaderboard/`` and ``leaderboard/team_code`` on
    PYTHONPATH) running the agent: its evaluator sets the agent's ``town_id``,
    ``sampled_scenarios`` and ``scenario_cofing_name``. Notices are not used: the model takes
    only an instruction.
    """

    mislead_probability = 0.2
    mislead_plans = 20

    def __init__(self, agent: AutonomousAgent):
        self.agent = agent
        self.route = self.planner = None
        self.instruction = "Drive safely."  # LMDrive's before the first plan
        self.misleading_left = 0

    def _start(self) -> None:
        try:
            from team_code.planner import InstructionPlanner, RoutePlanner
        except ImportError as exc:
            raise ConfigError(
                "LMDrive's instructions need LMDrive's leaderboard: put its leaderboard/ and "
                "leaderboard/team_code on PYTHONPATH, or give the agent an instruction (a string "
                f"or a function of the tick data) ({exc})"
            ) from exc
        self.route = RoutePlanner(5, 50.0)
        self.route.set_route(self.agent._global_plan, True)
        self.planner = InstructionPlanner(self.agent.scenario_cofing_name, True)
        random.seed("".join(str(node[0]) for node in self.agent._global_plan))

    def __call__(self, tick_data: dict) -> str:
        """The instruction to drive under now."""
        if self.planner is None:
            self._start()
        # LMDrive's planners work in metres from the route's mean position
        position = tick_data["gps"] - np.asarray(self.route.mean) * np.asarray(self.route.scale)
        compass = tick_data["compass"]
        next_waypoint, next_command = self.route.run_step(position)
        c, s = math.cos(compass + math.pi / 2), math.sin(compass + math.pi / 2)
        offset = np.asarray(next_waypoint) - position
        data = tick_data | {
            "next_waypoint": next_waypoint,
            "next_command": next_command.value,
            "target_point": np.array(
                [c * offset[0] + s * offset[1], -s * offset[0] + c * offset[1]]
            ),
            "measurements": [position[0], position[1], compass, tick_data["speed"]],
        }
        town = self.agent.town_id
        instruction = self.planner.command2instruct(town, data, self.route.route)
        # the notices are called as LMDrive calls them, for the same random draws
        self.planner.pos2notice(self.agent.sampled_scenarios, data)
        self.planner.traffic_notice(data)
        misleading = self.planner.command2mislead(town, data)
        if instruction != self.instruction:
            if self.misleading_left > 0:
                self.misleading_left -= 1
            elif misleading and random.random() < self.mislead_probability:
                self.instruction, self.misleading_left = misleading, self.mislead_plans
            else:
                self.instruction = instruction
        return self.instruction
