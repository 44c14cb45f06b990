"""The CARLA agent adapter fed recorded procedural frames in the leaderboard's input format."""

from __future__ import annotations

import importlib.util
import math
import sys
import types

import cv2
import numpy as np
import pytest
from pinned_readers import LANE_EVERYWHERE, RED_EVERYWHERE, constant_head

from closedloop import carla_agent
from closedloop.carla_agent import GPS_SCALE, WARMUP_CALLS, LMGenDriveAgent
from closedloop.model_driver import ModelDriver
from driving.control import Control
from scenes.lmdrive.conventions import theta_to_compass, wrap
from scenes.procedural.drive import DriveSpec, ProceduralScene
from schemas.errors import BadInputError, ConfigError

PLANS = 6  # planned steps fed after the warm-up
FIRST_FRAME = 10  # the car is moving here

# LMDrive's rig (leaderboard/team_code/lmdriver_agent.py sensors()) for the cameras we use
LMDRIVE_CAMERAS = {
    "rgb_front": {"x": 1.3, "y": 0.0, "z": 2.3, "yaw": 0.0, "width": 1200, "height": 900},
    "rgb_left": {"x": 1.3, "y": 0.0, "z": 2.3, "yaw": -60.0, "width": 400, "height": 300},
    "rgb_right": {"x": 1.3, "y": 0.0, "z": 2.3, "yaw": 60.0, "width": 400, "height": 300},
}


@pytest.fixture(scope="module")
def recorded():
    """Frames FIRST_FRAME.. of a procedural drive: RGB views as the rig sees them (the front
    upsized to 1200x900), and their measurements."""
    scene = ProceduralScene(DriveSpec(town_seed=951, route_seed=3, frames=60, size=(300, 400)))
    frames = []
    for i in range(FIRST_FRAME, FIRST_FRAME + PLANS):
        images = scene.images(i)
        images["front"] = cv2.resize(images["front"], (1200, 900))
        frames.append((images, scene.measurements(i)))
    return scene, frames


def input_data(images: dict, m, call: int) -> dict:
    """One call's leaderboard input: sensor id -> (frame number, data)."""
    lat, lon = m.y / GPS_SCALE[0], m.x / GPS_SCALE[1]
    imu = np.array([0.0, 0.0, 9.81, 0.0, 0.0, 0.0, theta_to_compass(m.theta)])
    data = {f"rgb_{v}": cv2.cvtColor(images[v], cv2.COLOR_RGB2BGRA) for v in images}
    data |= {"gps": np.array([lat, lon, 0.5]), "imu": imu, "speed": {"speed": m.speed}}
    return {sid: (call, value) for sid, value in data.items()}


def drive(agent: LMGenDriveAgent, frames: list) -> list:
    """The warm-up on the first frame, then each frame twice (20 Hz): every call's control."""
    calls = [frames[0]] * WARMUP_CALLS + [f for f in frames for _ in range(2)]
    return [agent.run_step(input_data(*f, call), call / 20) for call, f in enumerate(calls)]


def model_views(images: dict, size: tuple[int, int]) -> dict:
    return {v: cv2.resize(im, size[::-1], interpolation=cv2.INTER_AREA) for v, im in images.items()}


class Recorder:
    """An instruction source that records the tick data it is given."""

    def __init__(self, instruction: str):
        self.instruction, self.ticks = instruction, []

    def __call__(self, tick_data: dict) -> str:
        self.ticks.append(tick_data)
        return self.instruction


def test_imports_without_carla_or_the_leaderboard():
    assert importlib.util.find_spec("carla") is None
    assert importlib.util.find_spec("leaderboard") is None
    cls = getattr(carla_agent, carla_agent.get_entry_point())
    assert cls is LMGenDriveAgent
    assert LMGenDriveAgent.__mro__[1].__module__ == "closedloop.carla_agent"  # the stand-in


def test_sensors_are_lmdrive_rig_for_the_cameras_used():
    agent = LMGenDriveAgent("demo", instruction="Go straight.")
    sensors = {s["id"]: s for s in agent.sensors()}
    assert set(sensors) == {"rgb_front", "rgb_left", "rgb_right", "gps", "imu", "speed"}
    for sid, rig in LMDRIVE_CAMERAS.items():
        assert sensors[sid]["type"] == "sensor.camera.rgb"
        assert sensors[sid]["fov"] == 100
        assert {k: sensors[sid][k] for k in rig} == rig
    assert sensors["gps"]["type"] == "sensor.other.gnss"
    assert sensors["imu"]["type"] == "sensor.other.imu"
    assert sensors["speed"] == {
        "type": "sensor.speedometer",
        "reading_frequency": 20,
        "id": "speed",
    }
    agent.set_global_plan([{"lat": 0.0, "lon": 0.0}], [])
    assert agent._global_plan == [{"lat": 0.0, "lon": 0.0}]


def test_max_speed_is_lmdrive_uncapped_unless_set():
    assert LMGenDriveAgent("demo", instruction="Go.").driver.max_speed == np.inf

    class Capped(LMGenDriveAgent):
        max_speed = 8.0

    assert Capped("demo", instruction="Go.").driver.max_speed == 8.0


def test_drives_as_model_driver_does_with_lmdrive_timing(recorded):
    scene, frames = recorded
    text = scene.instructions()[0].instruction.text
    source = Recorder(text)
    agent = LMGenDriveAgent("demo", instruction=source)
    controls = drive(agent, frames)

    assert all(c == Control(throttle=0.0, brake=1.0, steer=0.0) for c in controls[:WARMUP_CALLS])
    planned = controls[WARMUP_CALLS::2]
    held = controls[WARMUP_CALLS + 1 :: 2]
    assert all(h is p for p, h in zip(planned, held, strict=True))
    for c in planned:
        assert 0.0 <= c.throttle <= 0.75 and c.brake in (0.0, 1.0) and -1.0 <= c.steer <= 1.0
    assert any(c.throttle > 0 or c.steer != 0 for c in planned)
    assert agent.driver.frames_encoded == PLANS and len(source.ticks) == PLANS

    # the pose from gps and compass is the drive's own
    for tick, (_, m) in zip(source.ticks, frames, strict=True):
        x, y, theta = tick["pose"]
        assert abs(x - m.x) < 0.02 and abs(y - m.y) < 0.02
        assert abs(wrap(theta - m.theta)) < 1e-6

    # the same plan as a ModelDriver fed the RGB views and measurements directly
    size = agent.model.config.image_size
    direct = ModelDriver(agent.model)
    for images, m in frames:
        result, control = direct.step(model_views(images, size), m.speed, (m.x, m.y, m.theta), text)
    np.testing.assert_allclose(agent.last_plan.waypoints, result.waypoints, atol=1e-5)
    assert control.brake == planned[-1].brake
    assert math.isclose(control.steer, planned[-1].steer, abs_tol=1e-5)

    # which the channel order changes: the comparison above can see a BGR/RGB mix-up
    swapped = ModelDriver(agent.model)
    images, m = frames[0]
    bgr = {v: im[:, :, ::-1] for v, im in model_views(images, size).items()}
    result, _ = swapped.step(bgr, m.speed, (m.x, m.y, m.theta), text)
    first, _ = ModelDriver(agent.model).step(
        model_views(images, size), m.speed, (m.x, m.y, m.theta), text
    )
    assert np.abs(result.waypoints - first.waypoints).max() > 1e-3


def test_instruction_source_changes_what_the_model_is_told(recorded, monkeypatch):
    _, frames = recorded
    source = Recorder("Turn left at the next intersection.")
    agent = LMGenDriveAgent("demo")
    agent.set_instruction_source(source)
    told = []
    instruct = agent.model.instruct
    monkeypatch.setattr(
        agent.model, "instruct", lambda state, texts: (told.append(texts), instruct(state, texts))
    )
    drive(agent, frames[:2])
    assert agent.driver.instruction == "Turn left at the next intersection." and told == []
    source.instruction = "Turn right at the next intersection."
    agent.run_step(input_data(*frames[2], 100), 5.0)
    assert told == [["Turn right at the next intersection."]]
    assert agent.driver.instruction == "Turn right at the next intersection."

    fixed = LMGenDriveAgent("demo", instruction="Keep going straight.")
    drive(fixed, frames[:1])
    assert fixed.driver.instruction == "Keep going straight."


def test_lmdrive_instructions_need_lmdrive_on_the_path(recorded):
    _, frames = recorded
    agent = LMGenDriveAgent("demo")  # LMDrive's planner, which is not installed here
    for call in range(WARMUP_CALLS):  # braking needs no instruction
        agent.run_step(input_data(*frames[0], call), call / 20)
    with pytest.raises(ConfigError, match="PYTHONPATH"):
        agent.run_step(input_data(*frames[0], WARMUP_CALLS), 1.0)


def test_returns_carla_vehicle_control_when_carla_is_there(recorded, monkeypatch):
    _, frames = recorded
    fake = types.ModuleType("carla")
    fake.VehicleControl = lambda **kw: ("VehicleControl", kw)
    monkeypatch.setitem(sys.modules, "carla", fake)
    agent = LMGenDriveAgent("demo", instruction="Go straight.")
    control = agent.run_step(input_data(*frames[0], 0), 0.0)
    assert control == ("VehicleControl", {"throttle": 0.0, "steer": 0.0, "brake": 1.0})


def test_bad_input_names_the_sensor(recorded):
    _, frames = recorded
    agent = LMGenDriveAgent("demo", instruction="Go straight.")
    good = input_data(*frames[0], 0)
    missing = {k: v for k, v in good.items() if k != "rgb_front"}
    with pytest.raises(BadInputError, match="'rgb_front'"):
        agent.run_step(missing, 0.0)
    three = good | {"rgb_left": (0, good["rgb_left"][1][:, :, :3])}
    with pytest.raises(BadInputError, match=r"'rgb_left'.*\(H, W, 4\)"):
        agent.run_step(three, 0.0)
    floats = good | {"rgb_right": (0, good["rgb_right"][1].astype(np.float32))}
    with pytest.raises(BadInputError, match="'rgb_right'.*uint8"):
        agent.run_step(floats, 0.0)
    with pytest.raises(BadInputError, match="'speed'"):
        agent.run_step(good | {"speed": (0, 3.0)}, 0.0)
    assert agent.calls == 0  # a bad call is not counted


def test_the_assisted_agent_needs_both_readers_and_stops_by_the_light_reader(recorded, tmp_path):
    from driving.light_rule import LightRuleController
    from lmgendrive.checkpoint import build_untrained, load_checkpoint, save_checkpoint

    class Assisted(LMGenDriveAgent):
        assisted = True

    save_checkpoint(build_untrained("tiny"), tmp_path / "plain", trained_stages=[0, 1, 2, 3])
    with pytest.raises(BadInputError, match="no lane reader and light reader"):
        Assisted(str(tmp_path / "plain"), instruction="Go.")
    model, _ = load_checkpoint("demo", "cpu")
    constant_head(model.vision.lane_reader, LANE_EVERYWHERE)
    constant_head(model.vision.light_reader, RED_EVERYWHERE)
    save_checkpoint(model, tmp_path / "readers", trained_stages=[0, 1, 2, 3, 4])
    scene, frames = recorded
    agent = Assisted(str(tmp_path / "readers"), instruction="Go straight.")
    planned = drive(agent, frames)[WARMUP_CALLS::2]
    controller = agent.driver.state.controllers[0]
    assert isinstance(controller, LightRuleController) and controller.lane_pose is not None
    assert controller.stopping and all(c.throttle == 0.0 for c in planned)
    assert agent.driver.state.light.shape == (1, 4)  # read from the centre crop of rgb_front
