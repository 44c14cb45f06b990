"""The centre view (LMDrive's rgb_center): drawn by the renderer as the front camera's centre
quarter, seen by the vision encoder only (cut from the front view where a frame has none, as
generated frames), carried by the training data, the closed loop and the CARLA adapter."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from lmgendrive.checkpoint import build_untrained, save_checkpoint
from lmgendrive.config import ModelConfig, preset_config
from lmgendrive.vision import center_from_front
from scenes.procedural.drive import DriveSpec, ProceduralScene, drive_version, ground_of_town
from scenes.procedural.render import Renderer
from schemas.errors import BadInputError, ConfigError
from schemas.scene import CENTER_VIEW, VIEWS


def center_config(preset: str = "tiny") -> ModelConfig:
    base = preset_config(preset)
    vision = base.vision.model_copy(update={"center_view": True})
    return ModelConfig.from_dict({**base.model_dump(), "vision": vision.model_dump()})


@pytest.fixture(scope="module")
def center_model():
    return build_untrained(center_config()).eval()


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def test_centre_view_is_the_front_cameras_centre_quarter():
    spec = DriveSpec(951, 0, frames=30, size=(64, 64), center_view=True)
    scene = ProceduralScene(spec)
    assert scene.views == (*VIEWS, CENTER_VIEW)
    assert drive_version(spec).endswith("+center")
    assert drive_version(spec) != drive_version(DriveSpec(951, 0, frames=30, size=(64, 64)))
    plain = ProceduralScene(DriveSpec(951, 0, frames=30, size=(64, 64)))
    assert CENTER_VIEW not in plain.images(25)

    images = scene.images(25)
    big = Renderer(scene.town, ground_of_town(951), scene.weather, (256, 256), views=("front",))
    front = big.render(scene.log.frames[25], scene.log.vehicle_colors, scene.log.pedestrian_colors)
    quarter = front["front"][96:160, 96:160]
    np.testing.assert_array_equal(images["front"], plain.images(25)["front"])
    assert mean_abs(images[CENTER_VIEW], quarter) < 0.5
    # not the 64-px front view blown up: the centre view has the detail it lacks
    blown_up = cv2.resize(images["front"][24:40, 24:40], (64, 64), interpolation=cv2.INTER_LINEAR)
    assert mean_abs(blown_up, quarter) > 5.0


def test_centre_view_needs_a_front_view_and_is_no_camera_view():
    for views in (["left", "right"], ["front", CENTER_VIEW]):
        with pytest.raises(ConfigError, match="vision.center_view needs a 'front' view"):
            ModelConfig.from_dict({"views": views, "vision": {"center_view": True}})
    assert center_config().vision_views == (*VIEWS, CENTER_VIEW)
    assert preset_config("tiny").vision_views == VIEWS
    # the embedded model's light reader reads the centre view; its cameras stay the three
    demo = preset_config("demo")
    assert demo.views == VIEWS and demo.vision_views == (*VIEWS, CENTER_VIEW)


def test_encoder_sees_the_centre_view_or_cuts_it_from_the_front(center_model):
    model = center_model
    torch.manual_seed(0)
    h, w = model.config.image_size
    cameras = torch.rand(2, 3, 3, h, w) * 2 - 1
    cut = center_from_front(cameras[:, 1])
    other = torch.rand(2, 1, 3, h, w) * 2 - 1
    with torch.no_grad():
        without = model.vision(cameras).light
        given_cut = model.vision(torch.cat([cameras, cut[:, None]], dim=1)).light
        given_other = model.vision(torch.cat([cameras, other], dim=1)).light
    torch.testing.assert_close(without, given_cut)
    assert (given_other - given_cut).abs().max() > 1e-3  # the centre view is read
    assert model.vision.view_embed.shape[0] == 4
    # the cut: the front's centre quarter at full size
    ramp = torch.arange(w, dtype=torch.float32).expand(1, 3, h, w)
    assert cut.shape == cameras[:, 1].shape
    assert center_from_front(ramp)[0, 0, 0, 0] > 3 * w / 8 - 1
    assert center_from_front(ramp)[0, 0, 0, -1] < 5 * w / 8


def test_rollout_takes_the_centre_view_and_the_generator_never_sees_it(center_model):
    model = center_model
    h, w = model.config.image_size
    rng = np.random.default_rng(0)
    seed = rng.integers(0, 255, (1, 4, 2, h, w, 3), dtype=np.uint8)
    state = model.start(seed, ["Turn left at the next intersection."])
    assert state.last_pixels.shape[1] == 3
    torch.testing.assert_close(state.last_pixels, model.pixels(seed[:, :3, -1], "seed"))
    plan = model.plan(state, rng.integers(0, 255, (1, 4, h, w, 3), dtype=np.uint8))
    assert plan.waypoints.shape == (1, model.config.vision.num_waypoints, 2)
    step = model.step(state)
    assert step.frames.shape[1] == 3  # the generator makes the camera views only
    with pytest.raises(BadInputError, match=r"5 views.*expects 3.*or 4 \(left, front, right, "):
        model.plan(state, rng.integers(0, 255, (1, 5, h, w, 3), dtype=np.uint8))


def test_training_data_give_the_encoder_the_centre_view_and_the_generator_not():
    from lmgendrive.train.config import DataConfig
    from lmgendrive.train.data import DriveDataset, FrameDataset, open_scenes
    from lmgendrive.train.perception import PerceptionBatch, perception_loss

    config = center_config()
    data = DataConfig(frames=24, size=32)
    scenes = open_scenes(data, center_view=True)
    assert scenes[0].views == (*VIEWS, CENTER_VIEW)
    vision = FrameDataset(scenes, config, views=config.vision_views)
    assert vision[0]["frames"].shape[0] == 4
    assert FrameDataset(scenes, config)[0]["frames"].shape[0] == 3  # stage 0: the generator's
    drive = DriveDataset(scenes, config, 2, 1)
    item = drive[0]
    assert item["frames"].shape[0] == 4 and item["future_frames"].shape[1] == 3
    # a scene without the centre view (an LMDrive root): cut from its front image at the size the
    # scene has it (128 px here, the model's frames are 32), as LMDrive cuts rgb_center
    plain = open_scenes(DataConfig(frames=24, size=128))
    got = FrameDataset(plain, config, views=config.vision_views)[3]["frames"]
    front = plain[0].images(3)["front"]
    assert got.shape[0] == 4
    np.testing.assert_array_equal(got[3], cv2.resize(front[48:80, 48:80], (32, 32)))
    np.testing.assert_array_equal(got[1], cv2.resize(front, (32, 32), interpolation=cv2.INTER_AREA))

    model = build_untrained(config).train()
    items = [vision[k] for k in (0, 5)]
    batch = PerceptionBatch(
        *(
            torch.as_tensor(np.stack([i[key] for i in items]))
            for key in PerceptionBatch.__dataclass_fields__
        )
    )
    perception_loss(model, batch).loss.backward()
    assert model.vision.view_embed.grad[3].abs().sum() > 0  # the centre view is trained


def test_closed_loop_renders_the_centre_view_for_a_model_that_sees_it(center_model):
    from closedloop.agents import ModelAgent
    from closedloop.model_driver import ModelDriver
    from closedloop.routes import RouteSpec, build_route
    from closedloop.run import drive_route

    agent = ModelAgent(center_model)
    assert agent.sees_center
    seen = []

    class Stop(Exception):
        pass

    def on_frame(frame, images, state):
        seen.append(sorted(images))
        if frame == 2:
            raise Stop

    size = center_model.config.image_size
    with pytest.raises(Stop):
        drive_route(
            build_route(RouteSpec("c", 971, (0, 0), "east", ("left",), "clear_noon", 3)),
            agent,
            size,
            on_frame,
        )
    assert seen and all(CENTER_VIEW in names for names in seen)
    assert agent.driver.frames_encoded == len(seen)
    images = {v: np.zeros((*size, 3), np.uint8) for v in (*VIEWS, CENTER_VIEW)}
    assert ModelDriver(center_model).views(images).shape[1] == 4
    del images[CENTER_VIEW]
    assert ModelDriver(center_model).views(images).shape[1] == 3


def test_carla_adapter_crops_the_centre_from_the_full_size_front(tmp_path):
    from closedloop.carla_agent import CAMERAS, WARMUP_CALLS, LMGenDriveAgent

    checkpoint = tmp_path / "center"
    save_checkpoint(build_untrained(center_config()), checkpoint)
    agent = LMGenDriveAgent(str(checkpoint), instruction="Go.")
    h, w = agent.model.config.image_size
    front = np.zeros((900, 1200, 3), np.uint8)
    front[337:563, 450:750] = 200  # the centre quarter, bright; the rest dark
    given = []
    step = agent.driver.step
    agent.driver.step = lambda images, *rest: (given.append(images), step(images, *rest))[1]
    sensors = {"rgb_front": front, "rgb_left": front[:300, :400], "rgb_right": front[:300, :400]}
    assert set(sensors) == set(CAMERAS.values())
    for call in range(WARMUP_CALLS + 1):
        data = {sid: (call, cv2.cvtColor(im, cv2.COLOR_RGB2BGRA)) for sid, im in sensors.items()}
        data |= {
            "gps": (call, np.array([0.0, 0.0, 0.5])),
            "imu": (call, np.array([0.0, 0.0, 9.81, 0.0, 0.0, 0.0, 0.0])),
            "speed": (call, {"speed": 0.0}),
        }
        agent.run_step(data, call / 20)
    center = given[-1][CENTER_VIEW]
    assert center.shape == (h, w, 3)
    assert center.min() >= 190  # all of it the bright centre quarter
    assert given[-1]["front"].mean() < 60


def test_a_later_stage_refuses_a_recipe_whose_vision_encoder_differs(tmp_path):
    from lmgendrive.train.backend import LocalBackend
    from lmgendrive.train.config import parse_config
    from lmgendrive.train.runner import final_dir, starting_model

    iters = {"iterations": 2, "batch_size": 1, "lr": 1e-4}
    recipe = {"preset": "tiny", "workdir": str(tmp_path), "output": str(tmp_path / "model")}
    recipe["stages"] = {"0": iters, "1": iters}
    save_checkpoint(build_untrained("tiny"), final_dir(parse_config(recipe), 0))
    assert not starting_model(parse_config(recipe), 1, LocalBackend()).config.vision.center_view
    with_center = {**recipe, "model": {"vision": {"center_view": True}}}
    with pytest.raises(ConfigError, match=r"model.vision.center_view True against False"):
        starting_model(parse_config(with_center), 1, LocalBackend())
