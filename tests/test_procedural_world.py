"""The procedural world: determinism, ground truth, expert safety and behaviour."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from driving.vehicle import HALF_LENGTH
from scenes.lmdrive import write_route
from scenes.procedural.drive import WAYPOINT_FRAMES, DriveSpec, ProceduralScene
from scenes.procedural.geometry import DIRECTIONS, Polyline, to_ego
from scenes.procedural.infractions import collisions, red_lights
from scenes.procedural.town import make_town, turn_between
from scenes.procedural.world import TICKS_PER_FRAME, World, simulate
from schemas.scene import VIEWS


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seeds_give_byte_identical_frames_and_measurements(tmp_path):
    spec = DriveSpec(town_seed=7, route_seed=2, weather="rain", frames=12)
    a = write_route(ProceduralScene(spec), tmp_path / "a" / "route")
    b = write_route(ProceduralScene(spec), tmp_path / "b" / "route")
    da, db = _tree_digest(a), _tree_digest(b)
    assert len(da) > 12 * 4 and da == db


def test_different_seeds_give_different_drives(scene_factory):
    a = scene_factory(town_seed=7, route_seed=2, frames=12)
    b = scene_factory(town_seed=7, route_seed=3, frames=12)
    c = scene_factory(town_seed=8, route_seed=2, frames=12)
    assert not np.array_equal(a.images(5)["front"], b.images(5)["front"])
    assert not np.array_equal(a.images(5)["front"], c.images(5)["front"])
    assert (a.measurements(5).x, a.measurements(5).y) != (b.measurements(5).x, b.measurements(5).y)


def test_town_has_grid_roads_lights_buildings_and_trees():
    town = make_town(3)
    assert len(town.nodes) == 25
    corners = [n for n in town.nodes if len(town.arms(n)) == 2]
    assert len(corners) == 4 and not any(town.has_light(n) for n in corners)
    assert sum(town.has_light(n) for n in town.nodes) == 21
    assert len(town.buildings) > 100 and len(town.trees) > 20
    spacing = np.diff(town.xs)
    assert spacing.min() >= 55 and spacing.max() <= 85 and np.ptp(spacing) > 1  # irregular grid
    x0, y0 = town.xs[1], town.ys[2]  # a junction's centre: inside its box within 7 m each way
    assert town.in_junction_box(x0, y0) and town.in_junction_box(x0 + 6.9, y0 - 6.9)
    assert not town.in_junction_box(x0 + 7.1, y0)  # on the road leaving it
    assert not town.in_junction_box(x0 + 20.0, y0 + 20.0)  # inside a block
    assert not town.is_corner_box(x0, y0)  # a junction's box, no corner's
    cx, cy = town.node_xy(corners[0])
    assert town.is_corner_box(cx + 5.0, cy - 5.0) and not town.is_corner_box(cx + 8.0, cy)


def test_measurements_ground_truth(noon_scene):
    m = noon_scene.measurements(10)
    assert m.waypoints.shape == (4, 2) and m.waypoints.dtype == np.float32
    # waypoints are the recorded future positions in the ego frame
    fut = noon_scene.measurements(14)
    c, s = np.cos(m.theta), np.sin(m.theta)
    dx, dy = fut.x - m.x, fut.y - m.y
    assert np.allclose(m.waypoints[1], [c * dx + s * dy, -s * dx + c * dy], atol=1e-4)
    assert m.light_state in ("none", "red", "yellow", "green")
    classes = {o.cls for o in m.objects}
    assert {"vehicle", "pedestrian"} & classes
    for o in m.objects:
        assert np.hypot(o.x, o.y) < 50.0 and o.length > 0 and o.width > 0 and o.height > 0
    assert m.instruction.text and m.instruction.category in ("turn", "follow", "notice", "other")
    d = m.to_dict()
    json.dumps(d)  # serialisable as LMDrive-style JSON
    assert d["instruction"]["instruction_id"] == m.instruction.instruction_id


def test_waypoints_match_speed_when_driving_straight(noon_scene):
    checked = 0
    for i in range(len(noon_scene)):
        m = noon_scene.measurements(i)
        if m.speed > 5.0 and abs(m.steer) < 0.02 and not m.is_junction and m.brake == 0:
            assert m.waypoints[3, 0] == pytest.approx(m.speed * 0.8, rel=0.25)
            assert abs(m.waypoints[3, 1]) < 0.5
            checked += 1
    assert checked > 5


def test_expert_is_safe_over_50_routes():
    """No collision and no red light run in 50 random routes over 10 towns."""
    towns = {s: make_town(100 + s) for s in range(10)}
    problems = []
    stopped_at_red = 0
    for r in range(50):
        log = simulate(towns[r % 10], seed=r, frames=150)
        problems += [(r, "collision", c) for c in collisions(log)]
        problems += [(r, "red light", v) for v in red_lights(log)]
        speeds = np.array([f.ego[3] for f in log.frames])
        stopped_at_red += int((speeds < 0.05).any())
    assert problems == []
    assert stopped_at_red >= 10  # the routes do meet red lights and stop for them


def _lane_distance(town, node, k_out, xy):
    return Polyline(town.lane(node, k_out)).project(xy, 0.0, window=1e6)


@pytest.mark.parametrize("turn", ["left", "right", "straight"])
def test_expert_follows_turn_instruction(turn):
    for route_seed in (1, 2):
        town = make_town(21)
        log = simulate(town, seed=route_seed, frames=420, turns=[turn])
        m = log.route.maneuvers[0]
        assert turn_between(m.k_in, m.k_out) == turn
        done = next(i for i, f in enumerate(log.frames) if f.ego_s + HALF_LENGTH > m.s_exit + 8.0)
        f = log.frames[done]
        heading = np.arctan2(*DIRECTIONS[m.k_out][::-1])
        assert abs((f.ego[2] - heading + np.pi) % (2 * np.pi) - np.pi) < np.radians(10)
        lane = Polyline(town.lane(m.node, m.k_out))
        s = lane.project(f.ego[:2], 0.0, window=1e6)
        assert np.linalg.norm(lane.point(s) - f.ego[:2]) < 0.8  # on the right lane of the new road


@pytest.mark.parametrize("turn", ["left", "right", "straight"])
def test_instruction_given_matches_the_maneuver(scene_factory, turn):
    scene = scene_factory(town_seed=21, route_seed=1, frames=80, turns=(turn,))
    first = next(s for s in scene.instructions() if s.instruction.category == "turn")
    assert not first.instruction.misleading
    expected = {
        "left": ("turn_left", "turn_left_dist"),
        "right": ("turn_right", "turn_right_dist"),
        "straight": ("go_straight", "go_straight_dist"),
    }[turn]
    assert first.instruction.args["type"] in expected
    assert "{" not in first.instruction.text and "[x]" not in first.instruction.text


@pytest.mark.parametrize("turn", ["left", "right"])
def test_next_junction_counts_down_to_the_stop_line_then_the_ego_turns(scene_factory, turn):
    scene = scene_factory(town_seed=21, route_seed=1, frames=300, turns=(turn,))
    approach = [scene.next_junction(i) for i in range(len(scene))]
    first = approach[0]
    assert first.turn == turn and turn in scene.junction_ahead(0, within=1e6)
    same = [j.stop_line_distance for j in approach if j is not None and j.node == first.node]
    assert same[0] > 0 > same[-1] and all(
        b <= a + 1e-9 for a, b in zip(same, same[1:], strict=False)
    )
    crossed = next(
        i
        for i, j in enumerate(approach)
        if j is not None and j.node == first.node and j.stop_line_distance < -6
    )
    lateral = scene.measurements(crossed).waypoints[-1, 1]  # ego frame: y to the left
    assert lateral > 0.2 if turn == "left" else lateral < -0.2


def test_misleading_instructions_are_flagged_and_infeasible(scene_factory):
    found = []
    for r in range(24):
        scene = scene_factory(town_seed=30 + r % 3, route_seed=r, frames=100)
        for span in scene.instructions():
            ins = span.instruction
            if not ins.misleading:
                continue
            found.append(ins)
            kind = ins.args["type"]
            if kind in ("change_left", "change_right"):
                continue  # every road has one lane per direction: never feasible
            assert kind in ("turn_left", "turn_right")
            front = scene.log.frames[span.start_frame].ego_s + HALF_LENGTH
            m = scene.log.route.next_maneuver(front)
            assert kind.split("_")[1] not in scene.town.turns(m.node, m.k_in)
            assert turn_between(m.k_in, m.k_out) != kind.split("_")[1]  # the expert did not obey
    assert len(found) >= 3


def test_a_notice_is_said_after_the_navigation_never_instead_of_it(scene_factory):
    noticed = 0
    for r in range(12):
        scene = scene_factory(town_seed=40 + r % 3, route_seed=r, frames=120)
        spans = scene.instructions()
        for span in (s for s in spans if s.instruction.category == "notice"):
            for i in range(span.start_frame, span.end_frame + 1):
                m = scene.measurements(i)
                if m.instruction.misleading or m.instruction_completed:
                    continue  # a lie or a completion outranks the notice
                if m.instruction.category == "other":
                    continue
                navigation = [
                    s.instruction
                    for s in spans
                    if s.start_frame <= i <= s.end_frame
                    and s.instruction.category in ("turn", "follow")
                    and not s.instruction.misleading
                ]
                assert m.instruction.category != "notice", (scene.name, i, m.instruction.text)
                assert m.instruction.text.endswith(span.instruction.text)
                assert m.instruction.args["notice"] == span.instruction.args["type"]
                if navigation:
                    assert m.instruction.text.startswith(navigation[-1].text)
                    assert m.instruction.args["type"] == navigation[-1].args["type"]
                noticed += 1
    assert noticed >= 15


def test_completion_flag_marks_the_end_of_completed_instructions(scene_factory):
    scene = scene_factory(town_seed=21, route_seed=1, frames=200, turns=("right",))
    done = [i for i in range(len(scene)) if scene.measurements(i).instruction_completed]
    assert done
    for i in done:
        m = scene.measurements(i)
        assert not m.instruction.misleading
        assert any(
            s.end_frame == i and s.instruction == m.instruction for s in scene.instructions()
        )


def test_views_and_sizes(scene_factory):
    scene = scene_factory(town_seed=2, route_seed=1, frames=3, size=(224, 224))
    imgs = scene.images(1)
    assert tuple(imgs) == VIEWS
    assert all(v.shape == (224, 224, 3) and v.dtype == np.uint8 for v in imgs.values())


def test_bad_spec_is_rejected():
    from schemas.errors import ConfigError

    with pytest.raises(ConfigError, match="valid: clear_noon"):
        ProceduralScene(DriveSpec(1, 1, weather="snow"))
    with pytest.raises(ConfigError, match="frames"):
        ProceduralScene(DriveSpec(1, 1, frames=0))
    with pytest.raises(ConfigError, match="unknown turn"):
        ProceduralScene(DriveSpec(1, 1, turns=("u-turn",)))


def test_lmdrive_round_trip_of_a_procedural_drive(tmp_path, scene_factory):
    from scenes.lmdrive import open_route

    scene = scene_factory(town_seed=5, route_seed=9, weather="night", frames=10, size=(48, 64))
    back = open_route(write_route(scene, tmp_path / scene.name))
    assert (len(back), back.views, tuple(back.size), back.fps) == (10, VIEWS, (48, 64), 10.0)
    for i in range(len(scene)):
        a, b = scene.images(i), back.images(i)
        assert all(np.array_equal(a[v], b[v]) for v in VIEWS)
        assert back.measurements(i).to_dict() == scene.measurements(i).to_dict()
    key = lambda s: (s.start_frame, s.end_frame, s.instruction.text)  # noqa: E731
    assert sorted(map(key, back.instructions())) == sorted(map(key, scene.instructions()))
    assert back.tags["weather"] == "night"


def test_an_agents_waypoints_drive_the_ego_while_the_world_goes_on():
    """World.tick takes an agent's waypoints in place of the expert's plan: waypoints at the car
    itself brake it to a stop, while the other vehicles keep driving; without waypoints the same
    world is the expert's drive that simulate() logs."""
    town = make_town(104)
    expert_log = simulate(town, seed=4, frames=60)
    world = World(town, seed=4)
    for _ in range(60 * TICKS_PER_FRAME):
        world.tick(np.zeros((4, 2)))
    held = world.log.frames
    assert held[-1].ego[3] < 0.1 < expert_log.frames[-1].ego[3]
    assert np.linalg.norm(held[-1].ego[:2] - held[20].ego[:2]) < 0.5
    moved = np.linalg.norm(held[-1].vehicles[:, :2] - held[0].vehicles[:, :2], axis=1)
    assert moved.max() > 10.0
    again = World(town, seed=4)
    for _ in range(60 * TICKS_PER_FRAME):
        again.tick()
    assert all(
        np.array_equal(a.ego, b.ego)
        for a, b in zip(again.log.frames, expert_log.frames, strict=True)
    )


def test_expert_waypoints_are_the_recorded_labels_and_leave_the_world_as_it_was():
    """World.expert_waypoints at a frame of the expert's drive is that frame's recorded waypoints
    (its future positions), and looking ahead changes nothing: the world drives on, its traffic
    extending routes from the shared generator, exactly as without it."""
    town = make_town(104)
    plain = simulate(town, seed=4, frames=160)
    world = World(town, seed=4)
    labels = {}
    for tick in range(160 * TICKS_PER_FRAME):
        frame, phase = divmod(tick, TICKS_PER_FRAME)
        if phase == 0 and frame % 5 == 0:
            labels[frame] = world.expert_waypoints()
        world.tick()
    frames = world.log.frames
    for a, b in zip(frames, plain.frames, strict=True):
        assert np.array_equal(a.ego, b.ego) and np.array_equal(a.vehicles, b.vehicles)
        assert np.array_equal(a.pedestrians, b.pedestrians)
    assert len(world.expert.route.maneuvers) >= 2  # the drive's route extended under the forks
    checked = 0
    for i, waypoints in labels.items():
        if i + max(WAYPOINT_FRAMES) >= len(frames):
            continue
        future = np.array([frames[i + k].ego[:2] for k in WAYPOINT_FRAMES])
        np.testing.assert_allclose(waypoints, to_ego(future, *frames[i].ego[:3]), atol=1e-9)
        checked += 1
    assert checked >= 30


def _lateral_offsets(log) -> np.ndarray:
    """The ego's signed distance from its route's lane centre (m, left positive), per frame."""
    out = []
    for f in log.frames:
        centre, heading = log.route.path.at(f.ego_s), log.route.path.heading(f.ego_s)
        dx, dy = f.ego[:2] - centre
        out.append(-np.sin(heading) * dx + np.cos(heading) * dy)
    return np.array(out)


def test_the_light_distance_is_the_gap_to_the_stop_line_the_light_state_is_read_at():
    """Frames under a light carry the metres to its stop line (shrinking by the distance driven),
    the others none."""
    scene = ProceduralScene(DriveSpec(town_seed=1, route_seed=5, frames=200, size=(32, 32)))
    ms = [scene.measurements(i) for i in range(len(scene))]
    lit = [m for m in ms if m.light_state != "none"]
    assert len(lit) > 20 and all(-0.5 < m.light_distance < 45.0 for m in lit)
    assert all(m.light_distance == np.inf for m in ms if m.light_state == "none")
    for a, b in zip(ms, ms[1:], strict=False):
        lit_both = "none" not in (a.light_state, b.light_state)
        if lit_both and b.light_distance < a.light_distance:
            driven = np.hypot(b.x - a.x, b.y - a.y)
            assert a.light_distance - b.light_distance == pytest.approx(driven, abs=0.05)


def test_perturbations_shape_the_controls_they_cover_and_no_others():
    from driving.control import Control
    from scenes.procedural.recovery import Perturbation

    steer = Perturbation(start=10, frames=8, steer=0.3)
    base = Control(0.4, 0.0, -0.1)
    assert steer.apply(base, 9.5) == base and steer.apply(base, 18.0) == base
    # the expert's steering replaced, not added to: its own correction would cancel the impulse
    assert steer.apply(base, 14.0).steer == pytest.approx(0.3)  # the triangle's peak, mid-span
    assert steer.apply(base, 12.0).steer == pytest.approx(0.15)  # half-way up
    assert steer.apply(base, 14.0).throttle == 0.4
    brake = Perturbation(start=10, frames=4, brake=True)
    assert brake.apply(base, 11.0) == Control(0.0, 1.0, -0.1)
    assert [f for f in range(20) if brake.covers(f)] == [10, 11, 12, 13]
    hold = Perturbation(start=10, frames=4, hold=True)
    held = hold.apply(Control(0.0, 1.0, -0.1), 11.0, speed=7.0)  # the expert's brake undone
    assert held.brake == 0.0 and held.steer == -0.1 and 0.0 < held.throttle < 0.2


def test_a_hold_is_released_when_stopping_in_the_room_left_takes_4_m_s2():
    from scenes.procedural.recovery import hold_released

    assert not hold_released(8.0, 11.0) and hold_released(8.0, 10.0)  # 64 / 8 + 2 m
    assert hold_released(0.0, 2.0) and not hold_released(0.0, 2.5)


def test_a_speed_hold_keeps_the_speed_until_the_expert_must_brake_for_the_red_light():
    """A recovery drive's speed hold runs towards a red light at a constant speed until the expert
    takes it back (the frames after it no longer perturbed), brakes in full and stops at the line
    (the drive runs no red light)."""
    from scenes.procedural.recovery import plan_perturbations

    pushed = ProceduralScene(
        DriveSpec(town_seed=1, route_seed=5, frames=200, size=(32, 32), recovery=True)
    )
    plan = plan_perturbations(np.random.default_rng([1, 5, 717]), 200)
    flags = np.array([pushed.measurements(i).perturbed for i in range(200)])
    released = [
        p for p in plan if p.hold and flags[p.start : p.start + p.frames].sum() < p.frames > 3
    ]
    assert released
    for p in released:
        end = p.start + int(flags[p.start : p.start + p.frames].sum())
        assert not flags[end : p.start + p.frames].any()  # the expert drives again
        speeds = [pushed.measurements(i).speed for i in range(p.start + 1, end)]
        assert np.ptp(speeds) < 0.05 and speeds[0] > 4.0  # held
        after = [pushed.measurements(i) for i in range(end, end + 8)]
        assert after[0].light_state == "red" and after[0].brake == 1.0
        assert after[-1].speed < 0.5 * speeds[0]  # braking hard: half the speed in 0.7 s
    assert not red_lights(pushed.log)  # and it stopped at the line


def test_a_recovery_drive_is_pushed_off_its_lane_and_the_expert_brings_it_back():
    """The same drive with and without perturbations: identical until the first one, then pushed
    further off the lane centre than the expert ever drives, and back near it within 3 s of each
    steering impulse; the perturbed frames are the ones the perturbations cover."""
    from scenes.procedural.recovery import plan_perturbations

    spec = dict(town_seed=12, route_seed=5, frames=200, size=(32, 32))
    clean = ProceduralScene(DriveSpec(**spec))
    pushed = ProceduralScene(DriveSpec(**spec, recovery=True))
    assert pushed.name == "town0012_route0005_recovery_clear_noon"
    flags = np.array([pushed.measurements(i).perturbed for i in range(200)])
    plan = plan_perturbations(np.random.default_rng([12, 5, 717]), 200)
    assert len(plan) >= 3 and all(any(getattr(p, k) for p in plan) for k in ("brake", "steer"))
    covered = [any(p.covers(i) for p in plan) for i in range(200)]
    assert not (flags & ~np.array(covered)).any()  # a hold may end early; the rest never do
    assert all(flags[i] for p in plan if not p.hold for i in range(p.start, p.start + p.frames))
    assert not any(clean.measurements(i).perturbed for i in range(200))
    first = plan[0].start
    assert all(
        np.array_equal(a.ego, b.ego)
        for a, b in zip(clean.log.frames[: first + 1], pushed.log.frames[: first + 1], strict=True)
    )
    offsets, expert = _lateral_offsets(pushed.log), _lateral_offsets(clean.log)
    assert np.abs(offsets).max() > 0.5 > np.abs(expert[:200]).max()
    for p in plan:
        if p.steer and p.start + p.frames + 30 < 200:
            assert abs(offsets[p.start + p.frames + 30]) < 0.2  # recovered
    brakes = [p for p in plan if p.brake]
    for p in brakes:
        assert pushed.measurements(p.start + p.frames - 1).brake == 1.0
