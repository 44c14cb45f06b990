"""The readers: displaced-camera drives record the camera's lane pose, relit drives draw and
label every lamp state where the expert stands, the pose survives the LMDrive round trip, the lane
loss learns only from labelled frames, the light reader learns the light near its stop line only,
readers added to a trained model change no token its planner reads and train alone (through
``start_from`` and stage 1's ``readers_only``), the ``model_lane_assist`` agent steers by the lane
reader and ``model_assisted`` also stops by the light reader."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from pinned_readers import LANE_EVERYWHERE, RED_EVERYWHERE, constant_head

from closedloop.agents import ModelAgent
from closedloop.evaluate import check_agents
from closedloop.model_driver import IN_LANE, ModelDriver, read_lane_pose, stop_probability
from driving.lane_assist import LaneAssistController
from driving.light_rule import READER_STOP_THRESHOLD, STOP_THRESHOLD, LightRuleController
from driving.vehicle import HALF_LENGTH
from lmgendrive.checkpoint import build_untrained, load_checkpoint, save_checkpoint
from lmgendrive.train.config import parse_config
from lmgendrive.train.data import FrameDataset
from lmgendrive.train.perception import (
    HEADING_SCALE,
    LANE_POSE,
    LANE_UNKNOWN,
    NEAR_LIGHT_M,
    NO_LANE,
    PerceptionBatch,
    lane_loss,
    lane_target,
    perception_loss,
)
from lmgendrive.train.runner import run
from lmgendrive.train.stages import set_stage
from lmgendrive.vision import LIGHT_CLASSES
from scenes.lmdrive import open_route, write_route
from scenes.procedural.displaced import displacements
from scenes.procedural.drive import LIGHT_RANGE, DriveSpec, ProceduralScene
from scenes.procedural.relit import DRAWN_STATES, relight
from schemas.errors import BadInputError, ConfigError

SPEC = DriveSpec(town_seed=3, route_seed=0, frames=60, size=(32, 32))


@pytest.fixture(scope="module")
def scenes() -> tuple[ProceduralScene, ProceduralScene]:
    plain = ProceduralScene(SPEC)
    return plain, ProceduralScene(DriveSpec(**{**SPEC.__dict__, "displaced": True}))


def test_a_displaced_drive_records_where_its_camera_stands_in_the_lane(scenes):
    plain, moved = scenes
    shifts = displacements(np.random.default_rng([3, 0, 919]), len(moved.log.frames))
    assert moved.name.endswith("_displaced_clear_noon") and moved.name != plain.name
    outside = 0
    for i in range(0, 60, 3):
        m, p = moved.measurements(i), plain.measurements(i)
        if m.is_junction and not moved.town.is_corner_box(m.x, m.y):  # no lane to keep there
            assert np.isnan(m.lane_offset) and np.isnan(m.lane_heading)
            continue
        outside += 1
        assert abs(p.lane_offset) < 0.05 and abs(p.lane_heading) < 0.01  # the expert keeps it
        # moved across the lane at the expert's arc length: the pose is the displacement
        assert m.lane_offset == pytest.approx(shifts[i, 0], abs=0.05)
        assert m.lane_heading == pytest.approx(shifts[i, 1] + p.lane_heading, abs=1e-3)
        # the expert's path seen from the displaced camera: on the side it was moved away from
        if abs(shifts[i, 0]) > 0.5 and abs(shifts[i, 1]) < np.radians(3):
            assert np.sign(m.waypoints[0, 1]) == -np.sign(shifts[i, 0])
        assert not np.array_equal(moved.images(i)["front"], plain.images(i)["front"])
    assert outside >= 10
    assert np.ptp([moved.measurements(i).lane_offset for i in range(0, 40)]) > 0.5


def test_the_lane_pose_survives_the_lmdrive_round_trip_and_old_files_read_as_unknown(
    scenes, tmp_path
):
    _, moved = scenes
    short = ProceduralScene(DriveSpec(**{**SPEC.__dict__, "displaced": True, "frames": 30}))
    route = write_route(short, tmp_path / short.name)
    back = open_route(route)
    for i in (0, 10, 29):
        want, got = short.measurements(i), back.measurements(i)
        assert got.lane_offset == pytest.approx(want.lane_offset, abs=1e-4)
        assert got.lane_heading == pytest.approx(want.lane_heading, abs=1e-4)
    path = route / "measurements" / "0005.json"
    raw = json.loads(path.read_text())
    key = next(k for k, v in raw.items() if isinstance(v, dict) and "lane_offset" in v)
    for name in ("lane_offset", "lane_heading"):
        del raw[key][name]  # as drives recorded before drive version 4
    path.write_text(json.dumps(raw))
    old = open_route(route).measurements(5)
    assert np.isnan(old.lane_offset) and np.isnan(old.lane_heading)
    item = FrameDataset([open_route(route)], build_untrained("tiny").config)[5]
    assert item["lane"][2] in (NO_LANE, LANE_UNKNOWN) and not item["lane"][:2].any()


def test_lane_targets_say_known_no_lane_or_unknown_and_the_loss_learns_from_labelled_ones():
    assert lane_target(0.4, -0.1, False).tolist() == pytest.approx([0.4, -0.1, LANE_POSE])
    assert lane_target(np.nan, np.nan, True).tolist() == [0.0, 0.0, NO_LANE]
    assert lane_target(np.nan, np.nan, False).tolist() == [0.0, 0.0, LANE_UNKNOWN]
    target = torch.tensor([[0.5, 0.1, LANE_POSE], [0.0, 0.0, NO_LANE], [0.0, 0.0, LANE_UNKNOWN]])
    pred = torch.tensor([[0.0, 0.0, 0.0], [9.0, 9.0, 0.0], [5.0, 5.0, 0.0]])
    terms = lane_loss(pred, target)
    assert terms["lane_pose"].item() == pytest.approx(0.5 + HEADING_SCALE * 0.1)
    assert terms["in_lane"].item() == pytest.approx(np.log(2.0), abs=1e-6)
    # an unknown frame's outputs change nothing; a junction box's pose changes nothing
    wild = pred.clone()
    wild[2] = torch.tensor([-7.0, 3.0, 40.0])
    wild[1, :2] = -3.0
    assert lane_loss(wild, target)["lane_pose"].item() == terms["lane_pose"].item()
    assert lane_loss(wild, target)["in_lane"].item() == terms["in_lane"].item()
    none = lane_loss(pred[2:], target[2:])
    assert none["lane_pose"].item() == 0.0 and none["in_lane"].item() == 0.0


def _frames(model, n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    size = model.config.image_size
    return torch.randint(0, 256, (n, len(model.config.vision_views), *size, 3), generator=g).to(
        torch.uint8
    )


def test_readers_added_to_a_trained_model_change_no_planner_token_and_train_alone():
    model = build_untrained("tiny").eval()
    pixels = model.pixels(_frames(model)[:, None], "frames")
    before = model.vision_tokens(pixels)
    _, head_light, _ = model.encode_observed(pixels)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.add_readers(seed=0, lane=True, light=True)
    assert model.config.vision.lane_reader and model.config.vision.light_reader
    assert model.config.vision_views[-1] == "center"  # the light reader reads the centre view
    lane_reader = model.vision.lane_reader
    model.add_readers(seed=1, lane=True, light=False)  # has them: nothing changes
    assert model.vision.lane_reader is lane_reader
    assert torch.equal(model.vision_tokens(pixels), before)  # the centre view cut from the front
    _, light, lane = model.encode_observed(pixels)
    assert lane.shape == (2, 3) and ((lane[:, 2] >= 0) & (lane[:, 2] <= 1)).all()
    # the light the car acts on is the reader's now, not the head's
    visual = model.vision(pixels[:, 0])
    read = model.vision.near_light_logits(visual).softmax(-1)
    assert torch.allclose(light, read, atol=1e-6) and not torch.allclose(light, head_light)

    trainable = set_stage(model, 1, readers_only=True)
    readers = [*model.vision.lane_reader.parameters(), *model.vision.light_reader.parameters()]
    assert {id(p) for p in trainable} == {id(p) for p in readers}
    model.train()
    batch = PerceptionBatch(
        frames=_frames(model),
        detection=torch.zeros(2, *(model.config.vision.bev_size,) * 2, 8),
        waypoints=torch.zeros(2, 4, 2),
        light=torch.tensor([0, 1]),
        lane=torch.tensor([[0.8, 0.2, LANE_POSE], [0.0, 0.0, NO_LANE]]),
        near_light=torch.tensor([1, 3]),
    )
    out = perception_loss(model, batch)
    assert {"lane_pose", "in_lane", "near_light"} <= set(out.terms)
    out.loss.backward()
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    optimizer.step()
    after = model.state_dict()
    changed = {k for k, v in state.items() if not torch.equal(after[k], v)}
    assert not changed  # every weight and BatchNorm statistic of the trained model as it was
    for reader in (model.vision.lane_reader, model.vision.light_reader):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in reader.parameters())


@pytest.mark.parametrize("near", [None, 25.0])
def test_the_light_reader_learns_the_light_near_its_stop_line_only(near):
    scene = ProceduralScene(DriveSpec(town_seed=2, route_seed=0, frames=200, size=(32, 32)))
    kw = {} if near is None else {"near_light_range": near}
    data = FrameDataset([scene], build_untrained("tiny").config, **kw)
    near = NEAR_LIGHT_M if near is None else near
    seen = {"near": 0, "far": 0}
    for i in range(0, 200, 2):
        m, item = scene.measurements(i), data[i]
        assert item["light"] == LIGHT_CLASSES.index(m.light_state)  # the head's: every range
        if m.light_state != "none" and m.light_distance <= near:
            assert item["near_light"] == item["light"]
            seen["near"] += 1
        else:
            assert item["near_light"] == LIGHT_CLASSES.index("none")
            seen["far"] += m.light_state != "none"
    assert seen["near"] > 0 and seen["far"] > 0


def test_a_relit_drive_draws_every_lamp_state_where_the_expert_stands_and_labels_the_drawn_one():
    spec = DriveSpec(town_seed=2, route_seed=0, frames=200, size=(32, 32))
    plain, relit = (
        ProceduralScene(spec),
        ProceduralScene(DriveSpec(**{**spec.__dict__, "relit": True})),
    )
    assert relit.name.endswith("_relit_clear_noon")
    town, route = relit.town, relit.log.route
    frames = relight(town, route, relit.log.frames, np.random.default_rng([2, 0, 1021]))
    heads = [(node, k) for node, k, _ in town.light_heads()]
    standing = {"plain": set(), "relit": set()}
    for i in range(200):
        m, p = relit.measurements(i), plain.measurements(i)
        # the expert's drive, only the lights drawn otherwise
        assert (m.x, m.y, m.speed, m.light_distance) == (p.x, p.y, p.speed, p.light_distance)
        assert np.array_equal(m.waypoints, p.waypoints)
        assert [replace(o, state="") for o in m.objects] == [
            replace(o, state="") for o in p.objects
        ]  # the lights among the objects show the drawn states
        if m.light_distance < LIGHT_RANGE:
            governing = route.next_maneuver(relit.log.frames[i].ego_s + HALF_LENGTH)
            drawn = frames[i].lights[heads.index((governing.node, governing.k_in))]
            assert m.light_state == drawn  # the label is the lamp drawn
        if m.light_distance <= NEAR_LIGHT_M and m.speed < 0.5:
            standing["plain"].add(p.light_state)
            standing["relit"].add(m.light_state)
    assert standing["plain"] == {"red"}  # the expert stands at red lights only
    assert standing["relit"] == set(DRAWN_STATES)


def _recipe(tmp_path, start_from: str, **stage) -> dict:
    return {
        "preset": "tiny",
        "start_from": start_from,
        "model": {"vision": {"lane_reader": True, "light_reader": True}},
        "workdir": str(tmp_path / "work"),
        "output": str(tmp_path / "model"),
        "data": {
            "towns": [3],
            "frames": 30,
            "size": 32,
            "cache": str(tmp_path / "scenes"),
            "workers": 0,
        },
        "stages": {
            "1": {"iterations": 3, "batch_size": 2, "lr": 1e-2, "warmup": 1, **stage},
        },
    }


def test_start_from_gives_a_trained_checkpoint_readers_trained_on_displaced_drives(tmp_path):
    trained = build_untrained("tiny", seed=7)
    save_checkpoint(trained, tmp_path / "trained", trained_stages=[0, 1, 2])
    config = parse_config(
        _recipe(
            tmp_path,
            str(tmp_path / "trained"),
            displaced_routes=1,
            relit_routes=1,
            readers_only=True,
        )
    )
    assert run(config) == tmp_path / "model"
    model, _ = load_checkpoint(tmp_path / "model", "cpu")
    assert model.vision.lane_reader is not None and model.vision.light_reader is not None
    meta = json.loads((tmp_path / "model" / "config.json").read_text())
    assert meta["trained_stages"] == [0, 1, 2]  # its planner is the trained checkpoint's
    old = trained.state_dict()
    new = model.state_dict()
    assert {k for k in new if k not in old} == {
        k for k in new if k.startswith(("vision.lane_reader.", "vision.light_reader."))
    }
    assert all(torch.equal(new[k], v) for k, v in old.items())
    assert len(list((tmp_path / "scenes").glob("town0003_route0001_displaced_*"))) == 1
    assert len(list((tmp_path / "scenes").glob("town0003_route0002_relit_*"))) == 1
    rows = [
        json.loads(line)
        for line in (tmp_path / "work" / "stage1" / "log.jsonl").read_text().splitlines()
    ]
    assert any("lane_pose" in r and "near_light" in r for r in rows)


def test_recipes_and_agents_that_need_readers_say_so(tmp_path):
    with pytest.raises(ConfigError, match="light_reader"):
        parse_config(
            {**_recipe(tmp_path, "demo", readers_only=True), "model": {}, "start_from": None}
        )
    for key in ("displaced_routes", "relit_routes"):
        bad = _recipe(tmp_path, "demo")
        bad["stages"]["2"] = {"iterations": 2, "batch_size": 1, "lr": 1e-4, key: 1}
        with pytest.raises(ConfigError, match="stage 1 only"):
            parse_config(bad)
    bad = _recipe(tmp_path, "demo", near_light_range=20.0)
    bad["model"] = {}
    with pytest.raises(ConfigError, match="near_light_range is the light reader's"):
        parse_config(bad)  # no light reader to label
    assert parse_config(_recipe(tmp_path, "demo", near_light_range=20.0))
    with pytest.raises(ConfigError, match="preset built in code"):
        run(parse_config(_recipe(tmp_path, "tiny", readers_only=True)))
    readerless = tmp_path / "readerless"
    save_checkpoint(build_untrained("tiny"), readerless, trained_stages=[0, 1, 2])
    with pytest.raises(BadInputError, match="no lane reader, which model_lane_assist"):
        check_agents(["model_lane_assist"], str(readerless))
    with pytest.raises(BadInputError, match="no lane reader and light reader, which model_ass"):
        check_agents(["model", "model_assisted"], str(readerless))
    assert check_agents(["model", "model_assisted"], "demo")  # the embedded one has them
    with pytest.raises(BadInputError, match="lane reader"):
        ModelDriver(build_untrained("tiny"), lane_assist="read")


def test_the_lane_assist_agent_steers_by_the_readers_pose_and_not_where_it_sees_no_lane():
    assert read_lane_pose(np.array([0.3, -0.05, IN_LANE + 0.1])) == pytest.approx((0.3, -0.05))
    assert read_lane_pose(np.array([0.3, -0.05, IN_LANE - 0.1])) is None
    model, _ = load_checkpoint("demo", "cpu")
    constant_head(model.vision.lane_reader, LANE_EVERYWHERE)
    driver = ModelDriver(model, lane_assist="read")
    scene = ProceduralScene(DriveSpec(town_seed=3, route_seed=0, frames=5, size=(64, 64)))
    for i in range(5):
        m = scene.measurements(i)
        driver.step(scene.images(i), m.speed, (m.x, m.y, m.theta), m.instruction.text)
        controller = driver.state.controllers[0]
        assert isinstance(controller, LaneAssistController)
        lane = driver.state.lane[0].numpy()
        assert controller.lane_pose == pytest.approx((float(lane[0]), float(lane[1])))


def test_the_lane_pose_is_kept_in_corners_and_dropped_in_junctions(scenes):
    from scenes.procedural.drive import frame_measurements

    plain, _ = scenes
    town, f = plain.town, plain.log.frames[10]
    corner = next(n for n in town.nodes if len(town.arms(n)) == 2)
    junction = next(n for n in town.nodes if len(town.arms(n)) == 4)
    m0 = plain.measurements(10)
    for node, kept in ((corner, True), (junction, False)):
        ego = f.ego.copy()
        ego[:2] = town.node_xy(node) + 3.0
        m = frame_measurements(
            town, plain.log.route, replace(f, ego=ego), 10, m0.waypoints, m0.instruction, False, ""
        )
        assert m.is_junction and np.isfinite(m.lane_offset) == kept
        assert np.isfinite(m.lane_heading) == kept


def test_the_assisted_agent_steers_by_the_lane_reader_and_stops_by_the_light_reader():
    model, _ = load_checkpoint("demo", "cpu")
    constant_head(model.vision.lane_reader, LANE_EVERYWHERE)
    constant_head(model.vision.light_reader, RED_EVERYWHERE)
    without = ModelDriver(build_untrained("tiny"), light_rule=True).controller()
    assert without.rule.stop_threshold == STOP_THRESHOLD  # the light head: InterFuser's
    agent = ModelAgent(model, assisted=True)
    assert agent.name == "model_assisted" and agent.sees_center
    driver = agent.driver
    scene = ProceduralScene(
        DriveSpec(town_seed=3, route_seed=0, frames=3, size=(64, 64), center_view=True)
    )
    for i in range(3):
        m = scene.measurements(i)
        images = scene.images(i)
        assert "center" in images
        _, control = driver.step(images, m.speed, (m.x, m.y, m.theta), m.instruction.text)
        controller = driver.state.controllers[0]
        assert isinstance(controller, LightRuleController)
        lane = driver.state.lane[0].numpy()
        assert controller.lane_pose == pytest.approx((float(lane[0]), float(lane[1])))
        assert controller.stop_prob == pytest.approx(
            stop_probability(driver.state.light[0].numpy())
        )
        assert controller.rule.stop_threshold == READER_STOP_THRESHOLD
        assert controller.stop_prob > 0.9 and controller.stopping
        assert control.throttle == 0.0
