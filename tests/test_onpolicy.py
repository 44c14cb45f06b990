"""On-policy drives (DAgger): a closed-loop drive recorded with the expert's labels for every state,
written as an LMDrive route, read back and drawn as its own planner group."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from closedloop.agents import LabelOracleAgent, LaneKeepingAgent
from closedloop.evaluate import run_drives
from closedloop.onpolicy import OnPolicyRecorder, index_onpolicy, write_onpolicy
from closedloop.routes import RouteSpec, build_route, sample_routes
from closedloop.run import drive_route
from driving.control import Control
from lmgendrive.checkpoint import load_checkpoint
from lmgendrive.train.config import PlannerConfig
from lmgendrive.train.data import DriveDataset, maneuver_groups
from pipeline.drive_cli import parse_towns
from scenes.lmdrive import open_root
from scenes.procedural.drive import DriveSpec, ProceduralScene
from scenes.procedural.geometry import to_ego
from schemas.errors import BadInputError, ConfigError

# town 971: a corner (roads east and north) at junction (0, 0)
CORNER = RouteSpec("corner", 971, (0, 0), "east", ("left",), "clear_noon", 3)
LATER = (2, 4, 6, 8)  # the waypoints' frames ahead


@pytest.fixture(scope="module")
def oracle_drive(tmp_path_factory):
    """The corner driven by the label oracle, recorded, written and read back."""
    root = tmp_path_factory.mktemp("onpolicy")
    built = build_route(CORNER)
    recorder = OnPolicyRecorder(LabelOracleAgent())
    result = drive_route(built, recorder, (32, 32), recorder.on_frame)
    write_onpolicy(recorder.scene(built, "onpolicy_corner"), root)
    (root / "onpolicy_torn.partial").mkdir()  # a write that never finished
    (root / "notes").mkdir()  # not ours
    index_onpolicy(root)
    return result, recorder, open_root(root)


def test_a_recorded_drive_reads_back_frame_for_frame(oracle_drive):
    result, recorder, scenes = oracle_drive
    (scene,) = scenes  # the index lists only the routes that were recorded
    assert len(scene) == result.frames == len(recorder.labels)
    assert scene.tags["source"] == "onpolicy"
    for i in (0, len(scene) // 2, len(scene) - 1):
        m = scene.measurements(i)
        x, y, theta, speed = result.log.frames[i].ego
        assert (m.x, m.y, m.speed) == pytest.approx((x, y, speed), abs=1e-3)
        np.testing.assert_allclose(m.waypoints, recorder.labels[i], atol=1e-4)  # stored to 0.1 mm
        assert np.array_equal(scene.images(i)["front"], recorder.images[i]["front"])
    assert any(m.is_junction for m in map(scene.measurements, range(len(scene))))


def test_the_label_oracle_drives_where_its_labels_say(oracle_drive):
    """The labels are the expert's future positions from each state: the oracle, which steers by
    them, ends up within half a metre of where its labels put it 0.8 s earlier."""
    _, _, (scene,) = oracle_drive
    off = []
    for i in range(len(scene) - LATER[-1]):
        now, later = scene.measurements(i), scene.measurements(i + LATER[-1])
        driven = to_ego(np.array([[later.x, later.y]]), now.x, now.y, now.theta)[0]
        off.append(np.linalg.norm(driven - now.waypoints[-1]))
    assert np.median(off) < 0.5


def test_the_labels_are_the_experts_not_the_agents():
    """A lane keeper crawls at 2 m/s; the labels of the states it drives into are the expert's, who
    drives on at its own speed: they end metres beyond where the lane keeper went."""
    recorder = OnPolicyRecorder(LaneKeepingAgent(speed=2.0))
    result = drive_route(build_route(CORNER), recorder, (32, 32), recorder.on_frame)
    frames = [f.ego for f in result.log.frames]
    apart = []
    for i in range(len(recorder.labels) - LATER[-1]):
        x, y, theta, _ = frames[i]
        driven = to_ego(np.array([frames[i + LATER[-1]][:2]]), x, y, theta)[0]
        apart.append(np.linalg.norm(driven - recorder.labels[i][-1]))
    assert max(apart) > 1.0


def test_onpolicy_windows_are_a_group_of_their_own(oracle_drive):
    _, _, onpolicy = oracle_drive
    model, _ = load_checkpoint("demo", "cpu")
    expert = ProceduralScene(DriveSpec(1, 0, frames=60, size=(32, 32)))
    dataset = DriveDataset([expert, *onpolicy], model.config, 4, 1, pad_start=True)
    groups = maneuver_groups(dataset, 16, 8)
    mine = {k for k, (s, _) in enumerate(dataset.index) if s == 1}
    assert set(groups["onpolicy"].tolist()) == mine
    others = set(np.concatenate([g for n, g in groups.items() if n != "onpolicy"]).tolist())
    assert others and not others & mine


def test_onpolicy_root_and_share_go_together(tmp_path):
    with pytest.raises(ValidationError, match="onpolicy"):
        PlannerConfig(onpolicy=tmp_path)
    with pytest.raises(ValidationError, match="onpolicy"):
        PlannerConfig(onpolicy_share=0.2)
    assert PlannerConfig(junction_share=0.5, onpolicy=tmp_path, onpolicy_share=0.3)


def test_only_model_drives_are_recorded_and_towns_parse(tmp_path):
    with pytest.raises(BadInputError, match="model agents"):
        run_drives(
            sample_routes("tiny", 1, 0),
            ["lane_keeping"],
            1,
            "demo",
            tmp_path,
            (64, 64),
            1,
            tmp_path,
        )
    assert parse_towns("3-5") == [3, 4, 5]
    for bad in ("5-3", "x", "1-", "1:4"):
        with pytest.raises(ConfigError, match="FIRST-LAST"):
            parse_towns(bad)
    assert {r.town for r in sample_routes("tiny", 4, 0, [7, 8])} == {7, 8}


class SteersLeft:
    """An agent that always steers left at a steady throttle: it leaves any lane."""

    name, needs_images, privileged = "steers_left", False, False

    def reset(self, world, seed):
        pass

    def act(self, obs):
        return Control(throttle=0.5, brake=0.0, steer=-0.6)


def test_the_expert_takes_over_where_the_agent_strays():
    """An agent that steers off the road is taken over beyond 1.5 m (or 25 degrees) off its route
    and handed back near the centre line: the drive stays within a few metres of the route and
    reaches the goal, where alone it circles metres off the road until the route times out."""
    built = build_route(CORNER)
    path = built.route.path

    def most_off(result):
        return max(np.linalg.norm(path.point(f.ego_s) - f.ego[:2]) for f in result.log.frames)

    alone = drive_route(built, SteersLeft())
    assert alone.score.rc < 100.0 and most_off(alone) > 5.0
    recorder = OnPolicyRecorder(SteersLeft())
    result = drive_route(built, recorder, (16, 16), recorder.on_frame)
    assert result.score.rc == 100.0 and result.agent == "steers_left+takeover"
    assert most_off(result) < 3.0
    assert 0 < recorder.takeover_frames < result.frames
