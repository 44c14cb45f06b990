"""Closed-loop driving: routes, the LangAuto instruction schedule, driving and scoring a route (each
of the leaderboard's route ends and penalties on a real drive), the model driven from cached
history tokens, resuming a benchmark run, and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from closedloop.agents import ExpertAgent, LabelOracleAgent, LaneKeepingAgent, ModelAgent
from closedloop.evaluate import DRIVES_FILE, run_drives
from closedloop.model_driver import ModelDriver, driven_path
from closedloop.report import (
    draw_map,
    infractions_markdown,
    paired_difference,
    paired_markdown,
    summarize,
    table_markdown,
)
from closedloop.routes import (
    TRACKS,
    RouteSpec,
    build_route,
    read_routes,
    sample_routes,
    track_of,
)
from closedloop.run import drive_route
from driving.control import Control
from driving.leaderboard import PENALTY
from lmgendrive.checkpoint import check_checkpoint
from schemas.errors import BadInputError

# town 971: junction (0, 0) is a corner (roads east and north); (1, 0) lies on the south edge, so a
# car arriving there heading east may go straight or left, not right
CORNER = RouteSpec("corner", 971, (0, 0), "east", ("left",), "clear_noon", 3)


class Fixed:
    """An agent that always returns the same control."""

    needs_images, privileged = False, False

    def __init__(self, name: str, control: Control):
        self.name, self.control = name, control

    def reset(self, world, seed):
        pass

    def act(self, obs):
        return self.control


# ----------------------------------------------------------------------------- routes
def test_route_goal_lies_past_its_last_junction():
    built = build_route(RouteSpec("r", 971, (0, 0), "east", ("left", "right")))
    last = built.route.maneuvers[1]
    assert built.s_goal == pytest.approx(last.s_exit + 20.0)
    assert built.length == pytest.approx(built.s_goal - built.s_start)
    assert built.route.path.length > built.s_goal  # the path goes on past the goal


@pytest.mark.parametrize(
    "spec, fragment",
    [
        (RouteSpec("r", 971, (1, 0), "east", ("right",)), "no path to the goal"),
        (RouteSpec("r", 971, (0, 0), "west", ("left",)), "roads leave it heading east, north"),
        (RouteSpec("r", 971, (9, 0), "east", ("left",)), "not in the town"),
        (RouteSpec("r", 971, (0, 0), "east", ()), "at least one junction"),
    ],
)
def test_undrivable_routes_are_refused(spec, fragment):
    with pytest.raises(BadInputError, match=fragment):
        build_route(spec)


def test_route_file_turns_by_name_or_langauto_id(tmp_path):
    path = tmp_path / "routes.yaml"
    path.write_text(
        "routes:\n"
        "  - {route_id: a, town: 971, start: [0, 0], heading: east, turns: [left, 4]}\n"
        "  - {route_id: b, town: 972, start: [2, 2], heading: north, turns: [2], weather: fog}\n"
    )
    a, b = read_routes(path)
    assert a.turns == ("left", "right") and b.turns == ("straight",) and b.weather == "fog"


ROUTE = "route_id: a, town: 971, start: [0, 0], heading: east"


@pytest.mark.parametrize(
    "row, fragment",
    [
        (ROUTE + ", turns: [99]", "unknown instruction id 99"),
        (ROUTE + ", turns: [34]", "34 (follow_lane) is not a turn"),
        (ROUTE + ", turns: [left], speed: 3", "unknown key(s) ['speed']"),
        (ROUTE.replace("[0, 0]", "[1, 0]") + ", turns: [right]", "no path to the goal"),
        (ROUTE + ", turns: [left], weather: snow", "weather"),
        (ROUTE + ", turns: [left], start_speed: 30", "start_speed: expected m/s in 0..8"),
    ],
)
def test_bad_route_files_name_file_route_and_key(tmp_path, row, fragment):
    path = tmp_path / "routes.yaml"
    path.write_text(f"routes:\n  - {{{row}}}\n")
    with pytest.raises(BadInputError) as e:
        read_routes(path)
    assert fragment in str(e.value) and "routes.yaml" in str(e.value)


def test_drawn_routes_fall_in_their_track_and_repeat():
    for track, (lo, hi) in TRACKS.items():
        specs = sample_routes(track, 6, seed=5)
        assert specs == sample_routes(track, 6, seed=5)
        lengths = [build_route(s).length for s in specs]
        assert all(lo <= x < hi and track_of(x) == track for x in lengths)
        assert len({s.weather for s in specs}) == 6  # weathers cycled


# ----------------------------------------------------------------------------- driving and scoring
def test_expert_completes_with_full_score_and_schedule_issues_the_turn():
    built = build_route(CORNER)
    result = drive_route(built, ExpertAgent())
    assert result.score.ended_by is None and result.score.rc == 100.0
    assert result.score.ds == 100.0 and result.score.counts == {}
    assert result.log.frames[-1].ego_s >= built.s_goal
    turn = [i for i in result.issued if i.instruction.args["type"].startswith("turn_left")]
    assert turn, [i.instruction.text for i in result.issued]
    first = turn[0].frame
    m = built.route.maneuvers[0]
    stop = m.s_stop - result.log.frames[first].ego_s - 2.45
    assert 0.0 < stop <= 40.0  # issued within LMDrive's trigger distances, never from the start
    assert all(i.kind != "navigation" or i.frame > 0 for i in result.issued[1:])
    notices = [i for i in result.issued if i.kind == "notice"]
    assert notices  # a pedestrian and the red light at the corner
    for notice in notices:  # said after the navigation instruction, never instead of it
        before = [i for i in result.issued if i.kind == "navigation" and i.frame <= notice.frame]
        assert notice.instruction.category != "notice" and "notice" in notice.instruction.args
        assert notice.instruction.text.startswith(before[-1].instruction.text + " ")


def test_a_route_starts_at_rest_unless_told_otherwise(tmp_path):
    from dataclasses import replace

    coast = Fixed("coast", Control(0.0, 0.0, 0.0))
    at_rest = drive_route(build_route(CORNER), coast)
    assert at_rest.log.frames[0].ego[3] == 0.0 and at_rest.score.rc == 0.0
    moving = replace(CORNER, start_speed=5.0)
    rolling = drive_route(build_route(moving), coast)
    assert rolling.log.frames[0].ego[3] == 5.0 and rolling.score.rc > 5.0
    rows = run_drives([CORNER, moving], ["expert"], 1, "demo", tmp_path, (64, 64))
    assert [r["key"] for r in rows] == ["0/corner/expert", "0/corner@5/expert"]
    assert [r["start_speed"] for r in rows] == [0.0, 5.0]


def test_always_braking_times_out_with_nothing_driven():
    built = build_route(CORNER)
    result = drive_route(built, Fixed("brake", Control(0.0, 1.0, 0.0)))
    assert result.score.ended_by == "route_timeout"
    assert result.score.rc == 0.0 and result.score.ds == 0.0
    assert result.log.frames[-1].t == pytest.approx(built.time_allowed(), abs=0.11)


def test_driving_straight_past_the_turn_strays_from_the_route():
    built = build_route(CORNER)  # the route turns left at (1, 0); straight on is a road too
    result = drive_route(built, Fixed("straight", Control(0.5, 0.0, 0.0)))
    assert result.score.ended_by == "route_deviation"
    assert 0.0 < result.score.rc < 100.0
    far = np.linalg.norm(
        built.route.path.point(result.log.frames[-1].ego_s) - result.log.frames[-1].ego[:2]
    )
    assert far > 30.0  # fmt: skip


def test_lane_keeper_runs_red_lights_and_pays_the_penalty():
    spec = sample_routes("tiny", 1, seed=0)[0]
    expert = drive_route(build_route(spec), ExpertAgent())
    blind = drive_route(build_route(spec), LaneKeepingAgent())
    assert expert.score.counts.get("red_light", 0) == 0
    assert blind.score.counts.get("red_light", 0) >= 1
    expected = np.prod([PENALTY[k] ** n for k, n in blind.score.counts.items() if k in PENALTY])
    assert blind.score.infraction_score == pytest.approx(expected)
    assert blind.score.ds == pytest.approx(blind.score.rc * expected)


def test_label_oracle_drives_the_corner_as_the_expert_does():
    """LMDrive's controllers on the planner's labels (the expert's future positions from wherever
    the car is) take the turn and reach the goal with full score, on the expert's own path (within
    a metre) and in its time (within 5 %)."""
    built = build_route(CORNER)
    oracle = drive_route(built, LabelOracleAgent())
    expert = drive_route(built, ExpertAgent())
    assert oracle.score.ended_by is None and oracle.score.counts == {}
    assert oracle.score.ds == 100.0
    path = np.array([f.ego[:2] for f in expert.log.frames])
    off = [np.linalg.norm(path - f.ego[:2], axis=1).min() for f in oracle.log.frames]
    assert max(off) < 1.0
    assert abs(len(oracle.log.frames) - len(expert.log.frames)) <= 0.05 * len(expert.log.frames)


# ----------------------------------------------------------------------------- the model
def test_driven_path_is_odometry_in_the_step_start_frame():
    # heading north (theta = pi/2) at 1 m per frame: 2, 4, 6, 8 m straight ahead
    poses = [(5.0, float(i), np.pi / 2) for i in range(9)]
    np.testing.assert_allclose(
        driven_path(poses, 8, 4), [[2, 0], [4, 0], [6, 0], [8, 0]], atol=1e-6
    )
    assert not driven_path(poses[:8], 8, 4).any()  # less than a step driven: zeros


def test_model_encodes_each_frame_once_and_retokenises_only_on_change(monkeypatch):
    from lmgendrive.checkpoint import load_checkpoint
    from scenes.procedural.drive import DriveSpec, ProceduralScene

    model, _ = load_checkpoint("demo", "cpu")
    scene = ProceduralScene(DriveSpec(971, 2, frames=12, size=(64, 64)))
    encoded = []
    model.vision.register_forward_hook(lambda m, i, o: encoded.append(i[0].shape[0]))
    calls = []
    instruct = model.instruct
    monkeypatch.setattr(model, "instruct", lambda s, t: (calls.append(t), instruct(s, t)))
    driver = ModelDriver(model)
    for i in range(12):
        m = scene.measurements(i)
        text = "Follow the lane ahead." if i < 6 else "Turn left at the next intersection."
        plan, control = driver.step(scene.images(i), m.speed, (m.x, m.y, m.theta), text)
        assert plan.waypoints.shape == (1, 4, 2) and 0.0 <= control.throttle <= 0.75
    assert encoded == [1] * 12  # one multi-view frame encoded per step, none twice
    assert driver.frames_encoded == 12
    assert calls == [["Turn left at the next intersection."]]
    assert driver.state.history.shape[1] == model.config.llm.history_frames


def test_model_driver_caps_the_speed_it_asks_for():
    """A cap below the drive's speed brakes every frame where an uncapped driver keeps going; the
    benchmark's model agent is capped at the training expert's cruise speed."""
    from lmgendrive.checkpoint import load_checkpoint
    from scenes.procedural.drive import DriveSpec, ProceduralScene
    from scenes.procedural.expert import CRUISE_SPEED

    model, _ = load_checkpoint("demo", "cpu")
    scene = ProceduralScene(DriveSpec(971, 2, frames=10, size=(64, 64)))
    capped, free = ModelDriver(model, max_speed=1.0), ModelDriver(model)
    brakes = {"capped": [], "free": []}
    for i in range(10):
        m = scene.measurements(i)
        assert m.speed > 1.1 * 1.0
        for name, driver in (("capped", capped), ("free", free)):
            _, control = driver.step(scene.images(i), m.speed, (m.x, m.y, m.theta), "Go.")
            brakes[name].append(control.brake)
    assert brakes["capped"] == [1.0] * 10
    assert sum(brakes["free"]) < 10
    assert ModelAgent(model).driver.max_speed == CRUISE_SPEED


def test_random_instruction_agent_is_told_something_else():
    from lmgendrive.checkpoint import load_checkpoint

    model, _ = load_checkpoint("demo", "cpu")
    agent = ModelAgent(model, random_instructions=True)
    told = []
    built = build_route(CORNER)

    def stop_early(frame, images, state):
        told.append(agent.told)
        if frame == 30:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        drive_route(built, agent, on_frame=stop_early)
    assert len(told) == 31 and all(told)
    given = agent.given.text
    assert told[-1] != given or len(set(told)) > 1


# ----------------------------------------------------------------------------- runs and reports
def test_a_run_resumes_and_drops_a_torn_line(tmp_path):
    routes = sample_routes("tiny", 2, seed=1)
    rows = run_drives(routes, ["expert"], 1, "demo", tmp_path, (64, 64))
    assert len(rows) == 2 and all(r["ds"] == 100.0 for r in rows)
    lines = (tmp_path / DRIVES_FILE).read_text().splitlines()
    (tmp_path / DRIVES_FILE).write_text(lines[0] + "\n" + lines[1][:20])  # interrupted mid-line
    again = run_drives(routes, ["expert"], 1, "demo", tmp_path, (64, 64))
    assert sorted(r["key"] for r in again) == sorted(r["key"] for r in rows)
    kept = [json.loads(x) for x in (tmp_path / DRIVES_FILE).read_text().splitlines()[2:]]
    assert [r["route_id"] for r in kept] == [routes[1].route_id]  # only the torn one redriven


def test_unknown_agent_and_untrained_planner_are_refused(tmp_path):
    with pytest.raises(BadInputError, match="unknown agent"):
        run_drives(sample_routes("tiny", 1, 0), ["flyer"], 1, "demo", tmp_path, (64, 64))
    with pytest.raises(BadInputError, match="no trained planner"):
        routes = sample_routes("tiny", 1, 0)
        run_drives(routes, ["model"], 1, "checkpoints/evaluator", tmp_path, (64, 64))
    assert not (tmp_path / DRIVES_FILE).exists()


def test_model_drives_record_their_weights_and_resume_with_the_same(tmp_path):
    routes = sample_routes("tiny", 1, 0)
    rows = run_drives(routes, ["model"], 1, "demo", tmp_path, (64, 64))
    assert rows[0]["model_sha256"] == check_checkpoint("demo")
    text = (tmp_path / DRIVES_FILE).read_text()
    assert run_drives(routes, ["model"], 1, "demo", tmp_path, (64, 64)) == rows
    assert (tmp_path / DRIVES_FILE).read_text() == text  # nothing driven again


def test_a_run_refuses_model_drives_of_other_weights(tmp_path):
    """Resuming into a folder whose model drives came from other weights would mix two models in
    one table: refused, naming the drive, and the folder is left as it was."""
    routes = sample_routes("tiny", 1, 0)
    expert = {"key": "0/x/expert", "agent": "expert", "route_id": "x"}  # blind: no weights
    for recorded, says in (("0" * 64, "0" * 64), (None, "not recorded")):
        model = {"key": "0/x/model", "agent": "model", "route_id": "x"}
        if recorded:
            model["model_sha256"] = recorded
        text = json.dumps(expert) + "\n" + json.dumps(model) + "\n"
        (tmp_path / DRIVES_FILE).write_text(text)
        with pytest.raises(BadInputError, match=f"drive 0/x/model .*{says}"):
            run_drives(routes, ["model"], 1, "demo", tmp_path, (64, 64))
        assert (tmp_path / DRIVES_FILE).read_text() == text
        assert sorted(p.name for p in tmp_path.iterdir()) == [DRIVES_FILE]


def test_summary_intervals_and_seed_spread():
    rows = [
        {"agent": "model", "track": "tiny", "route_id": f"r{k}", "seed_run": s, "ds": ds,
         "rc": 100.0, "is": ds / 100.0, "length_m": 80.0, "ended_by": "completed"}
        for s, values in enumerate([[20.0, 40.0, 60.0], [40.0, 60.0, 80.0]])
        for k, ds in enumerate(values)
    ]  # fmt: skip
    e = summarize(rows)["model"]["tiny"]
    assert e["routes"] == 3 and e["seeds"] == 2
    assert e["ds"]["mean"] == pytest.approx(50.0)
    assert e["ds"]["seed_std"] == pytest.approx(np.std([40.0, 60.0], ddof=1))
    lo, hi = e["ds"]["ci95"]
    assert 30.0 <= lo < 50.0 < hi <= 70.0  # routes' means are 30, 50, 70
    assert "| model | 50.0 ± 14.1" in table_markdown(summarize(rows))
    # every agent driven has its rows, those the table has no place for too (after the others)
    others = [{**r, "agent": a} for a in ("model_assisted", "an_agent_of_tomorrow") for r in rows]
    summary = summarize(rows + others)
    table, infractions = table_markdown(summary), infractions_markdown(summary)
    for agent in ("model", "model_assisted", "an_agent_of_tomorrow"):
        assert f"| {agent} | 50.0 ± 14.1" in table and f"| {agent} | tiny |" in infractions
    assert table.index("| model_assisted |") < table.index("| an_agent_of_tomorrow |")


def test_paired_difference_compares_the_same_drives_only():
    """The model on two hard routes, lane keeping on those and on an easy one it alone drove:
    unpaired means favour lane keeping (its easy route), the paired difference is the model's
    lead on the drives both made; a drive with no partner is left out."""

    def row(agent, route, s, ds):
        return {"agent": agent, "track": "short", "route_id": route, "seed_run": s, "ds": ds}

    rows = [
        *(row("model", r, s, ds) for s in (0, 1) for r, ds in (("hard1", 30), ("hard2", 50))),
        *(row("lane_keeping", r, s, d) for s in (0, 1) for r, d in (("hard1", 20), ("hard2", 30))),
        *(row("lane_keeping", "easy", s, 100.0) for s in (0, 1)),
        row("model", "hard1", 2, 0.0),  # lane keeping has no seed run 2
        row("expert", "hard1", 0, 100.0),
    ]  # fmt: skip
    d = paired_difference(rows, "model", "lane_keeping")["short"]
    assert d["pairs"] == 4
    assert d["mean"] == pytest.approx(15.0)  # (10 + 10 + 20 + 20) / 4
    lo, hi = d["ci95"]
    assert 10.0 <= lo <= 15.0 <= hi <= 20.0
    assert "| model | short | +15.0 [" in paired_markdown({"model": {"short": d}})
    # the other way round the sign flips; an agent never driven has no track
    assert paired_difference(rows, "lane_keeping", "model")["short"]["mean"] == pytest.approx(-15)
    assert paired_difference(rows, "random_instruction", "lane_keeping") == {}


def test_map_draws_the_route_and_the_drives(tmp_path):
    built = build_route(CORNER)
    row = drive_route(built, Fixed("straight", Control(0.5, 0.0, 0.0))).row()
    draw_map(built, [row], tmp_path / "map.png")
    # a car circling into buildings touches them for many frames: a row keeps the scored events
    circling = drive_route(built, Fixed("circling", Control(0.4, 0.0, 0.15)))
    events = circling.row()["events"]
    counts = {k[2:]: v for k, v in circling.row().items() if k.startswith("n_")}
    assert len(circling.events) > 2 * len(events)
    assert {kind: sum(e[0] == kind for e in events) for kind in counts} == counts
    draw_map(built, [row, circling.row()], tmp_path / "map.png")
    from PIL import Image

    img = np.asarray(Image.open(tmp_path / "map.png").convert("RGB"))
    assert img.shape[0] > 300 and len(np.unique(img.reshape(-1, 3), axis=0)) > 20
    assert not list(tmp_path.glob("*.partial*"))


def test_the_example_route_file_is_drivable():
    specs = read_routes("jobs/routes/drive_routes.yaml")
    assert [s.route_id for s in specs] == ["corner-left", "two-junctions", "night-loop"]


def without_readers(model):
    """``model``'s weights in a model of its config without the lane and light readers (and so
    without the action head's branch that reads them)."""
    from lmgendrive.checkpoint import build_model

    vision = model.config.vision.model_copy(update={"lane_reader": False, "light_reader": False})
    llm = model.config.llm.model_copy(update={"action_reads_readers": False})
    plain = build_model(model.config.model_copy(update={"vision": vision, "llm": llm}))
    kept = {
        k: v
        for k, v in model.state_dict().items()
        if "_reader." not in k and ".reader_branch." not in k
    }
    plain.load_state_dict(kept)
    return plain.eval()


def test_plan_reports_the_light_heads_reading_of_the_newest_frame():
    """PlanResult.light is the stage-1 light head on the frame just observed (no second
    encoding), and the light-rule driver stops while it reads red or yellow above 0.3."""
    import torch

    from lmgendrive.checkpoint import load_checkpoint
    from scenes.procedural.drive import DriveSpec, ProceduralScene

    model = without_readers(load_checkpoint("demo", "cpu")[0])  # the head, not the reader
    scene = ProceduralScene(DriveSpec(971, 2, frames=6, size=(64, 64)))
    driver = ModelDriver(model, light_rule=True)
    for i in range(6):
        m = scene.measurements(i)
        plan, control = driver.step(scene.images(i), m.speed, (m.x, m.y, m.theta), "Go.")
        views = driver.views(scene.images(i))
        with torch.no_grad():
            pixels = model.pixels(views, "frames")
            want = model.vision.perceive(model.vision(pixels)).light_logits.softmax(-1)
        np.testing.assert_allclose(plan.light, want.numpy(), atol=1e-5)
        assert plan.light.shape == (1, 4) and plan.light.sum() == pytest.approx(1.0, abs=1e-5)
        stop = float(plan.light[0, 1] + plan.light[0, 2])
        assert driver.state.controllers[0].stopping == (stop > 0.3)
        if stop > 0.3:
            assert control.brake == 1.0 and control.throttle == 0.0
    assert ModelAgent(model, light_rule=True).name == "model_light_rule"


def test_lane_oracle_feeds_the_assist_the_cars_true_lane_pose():
    """The model_lane_oracle agent hands the lane assist, every frame, where the car stands
    against its route's lane centre (privileged, as label_oracle is), and the assist's car
    reaches the corner's goal on its lane."""
    from lmgendrive.checkpoint import load_checkpoint

    model, _ = load_checkpoint("demo", "cpu")
    with pytest.raises(ValueError, match="one at a time"):
        ModelAgent(model, light_rule=True, lane_oracle=True)
    agent = ModelAgent(model, lane_oracle=True)
    assert agent.name == "model_lane_oracle"
    built = build_route(CORNER)
    seen = []

    def check(frame, images, state):
        x, y, theta = (float(v) for v in state.ego[:3])
        want = built.route.path.lane_pose(state.ego_s, x, y, theta)
        seen.append(agent.driver.state.controllers[0].lane_pose == want)

    result = drive_route(built, agent, on_frame=check)
    assert seen and all(seen)
    assert result.score.ended_by is None and result.score.rc == 100.0
