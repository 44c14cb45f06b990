"""Training data and recipes: shaped, deterministic batches from procedural scenes and LMDrive
roots; resumable sample streams; bad recipes raise ConfigError."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from driving.maneuver import path_maneuver
from lmgendrive.config import preset_config
from lmgendrive.train import cli
from lmgendrive.train.config import load_config, parse_config, parse_stage
from lmgendrive.train.data import (
    GROUPS,
    VERSION_FILE,
    DriveDataset,
    FrameDataset,
    PlannerData,
    StratifiedSampler,
    StreamSampler,
    drive_specs,
    is_departure,
    make_loader,
    maneuver_groups,
    perturbed_labels,
    render_cache,
)
from lmgendrive.train.schedule import WarmupCosine
from lmgendrive.vision import LIGHT_CLASSES
from scenes.lmdrive import open_root, write_index, write_route
from scenes.procedural.drive import DRIVE_VERSION, RECOVERY_VERSION, DriveSpec, ProceduralScene
from schemas.errors import ConfigError
from schemas.scene import TURNS

TINY = preset_config("tiny")


@pytest.fixture(scope="module")
def scene() -> ProceduralScene:
    return ProceduralScene(DriveSpec(town_seed=4, route_seed=2, frames=36, size=(48, 48)))


@pytest.fixture(scope="module")
def lmdrive_scene(scene, tmp_path_factory) -> object:
    root = tmp_path_factory.mktemp("lmdrive")
    write_index(root, [write_route(scene, root / scene.name)])
    return open_root(root)[0]


def _batches(dataset, n: int, start: int = 0, workers: int = 0) -> list[dict]:
    loader = make_loader(dataset, batch_size=3, seed=7, start=start, workers=workers)
    return [b for b, _ in zip(loader, range(n), strict=False)]


def test_frame_batches_are_shaped_and_deterministic(scene):
    dataset = FrameDataset([scene], TINY)
    assert len(dataset) == 36
    first, again = _batches(dataset, 2, workers=2), _batches(dataset, 2, workers=0)
    b = first[0]
    assert b["frames"].shape == (3, 3, 32, 32, 3) and b["frames"].dtype == torch.uint8
    assert b["detection"].shape == (3, 8, 8, 8) and b["waypoints"].shape == (3, 4, 2)
    assert b["light"].dtype == torch.int64
    for x, y in zip(first, again, strict=True):
        assert all(torch.equal(x[k], y[k]) for k in x)
    skipped = _batches(dataset, 1, start=3)[0]  # resuming at sample 3 continues the same stream
    assert torch.equal(skipped["frames"], first[1]["frames"])


def test_drive_batches_from_procedural_and_lmdrive_agree(scene, lmdrive_scene):
    procedural = DriveDataset([scene], TINY, context=3, steps=2)
    recorded = DriveDataset([lmdrive_scene], TINY, context=3, steps=2)
    assert len(procedural) == len(recorded) == 36 - 2 - 16
    a, b = _batches(procedural, 1)[0], _batches(recorded, 1, workers=2)[0]
    assert a["frames"].shape == (3, 3, 3, 32, 32, 3)
    assert a["future_frames"].shape == (3, 2, 3, 8, 32, 32, 3)
    assert a["waypoints"].shape == (3, 2, 4, 2) and a["completed"].shape == (3, 2)
    assert a["prev_waypoints"].shape == (3, 4, 2) and a["speed"].shape == (3,)
    assert len(a["instruction"]) == 3 and all(isinstance(s, str) for s in a["instruction"])
    assert torch.equal(a["frames"], b["frames"]) and torch.equal(
        a["future_frames"], b["future_frames"]
    )
    assert torch.allclose(a["waypoints"], b["waypoints"], atol=1e-3)
    assert a["instruction"] == b["instruction"]


def test_previous_action_is_the_waypoints_one_step_earlier(scene):
    dataset = DriveDataset([scene], TINY, context=1, steps=1)
    assert not dataset[0]["prev_waypoints"].any()
    np.testing.assert_allclose(dataset[8]["prev_waypoints"], scene.measurements(0).waypoints)


def test_stream_sampler_shards_and_crosses_epochs():
    whole = list(zip(range(12), StreamSampler(5, seed=1), strict=False))
    assert sorted(i for _, i in whole[:5]) == list(range(5))
    ranks = [
        [i for _, i in zip(range(6), StreamSampler(5, 1, rank=r, world=2), strict=False)]
        for r in (0, 1)
    ]
    assert [i for pair in zip(*ranks, strict=True) for i in pair] == [i for _, i in whole]


def test_path_maneuver_reads_the_last_segments_heading():
    ahead = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0]])
    assert path_maneuver(ahead) == "straight"
    left = ahead + [[0, 0], [0, 0], [0, 0], [0, 0.2]]
    assert path_maneuver(left) == "left"  # 11 degrees to the left (+y)
    assert path_maneuver(ahead - [[0, 0], [0, 0], [0, 0], [0, 0.2]]) == "right"
    assert path_maneuver(np.zeros((4, 2))) == "straight"  # standing: no heading


@pytest.fixture(scope="module")
def junction_drive() -> DriveDataset:
    """One-step windows of a drive that turns at a junction."""
    scene = ProceduralScene(DriveSpec(town_seed=1, route_seed=0, frames=200, size=(32, 32)))
    return DriveDataset([scene], TINY, context=2, steps=1)


def test_maneuver_groups_split_junction_windows_by_the_experts_turn(junction_drive):
    dataset, scene = junction_drive, junction_drive.scenes[0]
    groups = maneuver_groups(dataset, before=16, after=8)
    assert sorted(np.concatenate(list(groups.values())).tolist()) == list(
        range(len(dataset))
    )  # a partition
    inside = [scene.measurements(i).is_junction for i in range(len(scene))]
    entries = [t for t in range(1, len(inside)) if inside[t] and not inside[t - 1]]
    assert (
        entries
        and len(groups["other"])
        and sum(len(groups[m]) for m in ("left", "straight", "right"))
    )
    assert len(groups["left"])  # this drive turns left at a junction
    for name, members in groups.items():
        for k in members:
            _, t = dataset.index[k]
            m = scene.measurements(t)
            assert is_departure(m) == (name == "departure")
            if name in TURNS:
                assert any(e - 16 <= t <= e + 8 for e in entries)
                assert path_maneuver(m.waypoints) == name
            elif name == "other":
                assert not any(e - 16 <= t <= e + 8 for e in entries)


def test_approach_windows_lie_before_the_entry_zone_within_the_distance(junction_drive):
    dataset, scene = junction_drive, junction_drive.scenes[0]
    groups = maneuver_groups(dataset, before=16, after=8, approach_m=30.0)
    assert sorted(np.concatenate(list(groups.values())).tolist()) == list(range(len(dataset)))
    xy = np.array([(scene.measurements(i).x, scene.measurements(i).y) for i in range(len(scene))])
    metres = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(xy, axis=0).T))])
    inside = [scene.measurements(i).is_junction for i in range(len(scene))]
    entries = [t for t in range(1, len(inside)) if inside[t] and not inside[t - 1]]

    def approaching(t: int) -> bool:
        return any(t < e - 16 and metres[e] - metres[t] <= 30.0 for e in entries)

    assert len(groups["approach"]) >= 10
    for k in groups["approach"]:
        assert approaching(dataset.index[k][1])
    for k in groups["other"]:
        assert not approaching(dataset.index[k][1])
    assert not len(maneuver_groups(dataset, before=16, after=8)["approach"])  # off by default
    planner = PlannerData(dataset, 0.3, (16, 8), approach_share=0.4, approach_m=30.0)
    assert planner.groups[GROUPS.index("approach")].tolist() == groups["approach"].tolist()
    picks = [k for k, _ in zip(planner.loader(8, 0, 0, 0).sampler, range(2000), strict=False)]
    live = sum(w for g, w in zip(planner.groups, planner.shares, strict=True) if len(g))
    assert abs(np.isin(picks, groups["approach"]).mean() - 0.4 / live) < 0.035  # no right turn


def test_a_light_range_keeps_the_light_class_near_the_stop_line_only():
    scene = ProceduralScene(DriveSpec(town_seed=1, route_seed=5, frames=200, size=(32, 32)))
    recorded = FrameDataset([scene], TINY)
    near = FrameDataset([scene], TINY, light_range=10.0)
    red = LIGHT_CLASSES.index("red")
    far_red = near_red = 0
    for k in range(len(near)):
        m = scene.measurements(near.index[k][1])
        want = m.light_state if m.light_distance <= 10.0 else "none"
        assert near[k]["light"] == LIGHT_CLASSES.index(want)
        assert recorded[k]["light"] == LIGHT_CLASSES.index(m.light_state)
        far_red += recorded[k]["light"] == red and near[k]["light"] != red
        near_red += near[k]["light"] == red
    assert far_red > 10 and near_red > 3  # red from 45 m in the drive, from 10 m in the target


def test_stopping_windows_are_the_hard_stops_for_a_red_light_a_released_hold_shows():
    """A recovery drive whose speed hold is released short of a red light: the windows after the
    release, still fast, plan to stop; "stopping" holds exactly those windows of the kinds it
    takes (moving at 2 m/s or more towards a red or yellow light, the plan ending at half the
    speed or less), and the sampler draws them at their share."""
    scene = ProceduralScene(
        DriveSpec(town_seed=1, route_seed=5, frames=200, size=(32, 32), recovery=True)
    )
    dataset = DriveDataset([scene], TINY, context=2, steps=1)
    plain = maneuver_groups(dataset, before=16, after=8)
    groups = maneuver_groups(dataset, before=16, after=8, stopping=True)
    assert not len(plain["stopping"])  # off by default
    assert sorted(np.concatenate(list(groups.values())).tolist()) == sorted(
        np.concatenate(list(plain.values())).tolist()
    )  # the same windows, some moved to "stopping"

    def stopping(t: int) -> bool:
        m = scene.measurements(t)
        end_speed = np.linalg.norm(m.waypoints[-1] - m.waypoints[-2]) / 0.2
        return m.light_state in ("red", "yellow") and m.speed >= 2.0 and end_speed <= m.speed / 2

    ts = [dataset.index[k][1] for k in groups["stopping"]]
    assert len(ts) >= 3 and all(stopping(t) for t in ts)
    flags = [scene.measurements(t).perturbed for t in range(len(scene))]
    assert any(flags[t - 1] for t in ts)  # the first frame after a released hold
    for name in ("other", "recovery", "approach", *TURNS):
        assert not any(stopping(dataset.index[k][1]) for k in groups[name])
    planner = PlannerData(dataset, 0.3, (16, 8), stopping_share=0.4)
    picks = [k for k, _ in zip(planner.loader(8, 0, 0, 0).sampler, range(2000), strict=False)]
    live = sum(w for g, w in zip(planner.groups, planner.shares, strict=True) if len(g))
    assert abs(np.isin(picks, groups["stopping"]).mean() - 0.4 / live) < 0.035


def test_slowing_windows_are_the_remaining_ones_where_the_plan_starts_to_slow(junction_drive):
    dataset, scene = junction_drive, junction_drive.scenes[0]
    plain = maneuver_groups(dataset, before=16, after=8)
    groups = maneuver_groups(dataset, before=16, after=8, slowing=True)
    assert sorted(np.concatenate(list(groups.values())).tolist()) == list(range(len(dataset)))
    assert not len(plain["slowing"])  # off by default: the other groups keep their windows
    assert len(groups["slowing"]) >= 5
    for name in (*TURNS, "departure", "recovery"):
        assert groups[name].tolist() == plain[name].tolist()  # they come first
    assert sorted([*groups["slowing"], *groups["other"]]) == plain["other"].tolist()
    speeds = np.array([scene.measurements(i).speed for i in range(len(scene))])
    for k in groups["slowing"]:  # the recorded speeds fall over the plan's 0.8 s, not before
        t = dataset.index[k][1]
        assert speeds[t] >= 1.0 and speeds[t + 8] < speeds[t] - 0.5, (t, speeds[t : t + 9])
        before = scene.measurements(t - 8)  # the plan a step before did not slow
        assert np.linalg.norm(before.waypoints[-1]) > before.speed * 0.8 - 0.5
    for k in groups["other"]:
        t = dataset.index[k][1]
        m, before = scene.measurements(t), scene.measurements(max(t - 8, 0))
        slows, slowed = (
            x.speed >= 1.0 and np.linalg.norm(x.waypoints[-1]) <= x.speed * 0.8 - 0.5
            for x in (m, before)
        )
        onset = slows and t >= 8 and not slowed
        assert not onset, t  # every braking onset outside the earlier groups is in "slowing"
    planner = PlannerData(dataset, 0.3, (16, 8), slowing_share=0.4)
    picks = [k for k, _ in zip(planner.loader(8, 0, 0, 0).sampler, range(2000), strict=False)]
    live = sum(w for g, w in zip(planner.groups, planner.shares, strict=True) if len(g))
    assert abs(np.isin(picks, groups["slowing"]).mean() - 0.4 / live) < 0.035


def test_stratified_sampler_draws_by_share_and_resumes_exactly():
    groups = [np.arange(3), np.arange(100, 150), np.arange(200, 202), np.arange(1000, 3000)]
    draws = [
        x for x, _ in zip(StratifiedSampler(groups, [0.25] * 4, seed=3), range(4000), strict=False)
    ]
    share = [np.isin(draws, g).mean() for g in groups]
    assert np.allclose(share, 0.25, atol=0.03), share
    assert set(draws[:2000]) >= {0, 1, 2, 200, 201}  # small groups are drawn again and again
    resumed = [
        x
        for x, _ in zip(
            StratifiedSampler(groups, [0.25] * 4, seed=3, start=100), range(50), strict=False
        )
    ]
    assert resumed == draws[100:150]
    rank1 = [
        x
        for x, _ in zip(
            StratifiedSampler(groups, [0.25] * 4, 3, start=100, rank=1, world=2),
            range(20),
            strict=False,
        )
    ]
    assert rank1 == draws[101:141:2]
    empty_left = StratifiedSampler(
        [np.array([], dtype=int), np.array([7]), np.array([9])], [0.5, 0.25, 0.25], 0
    )
    drawn = [x for x, _ in zip(empty_left, range(400), strict=False)]
    assert set(drawn) == {7, 9} and 0.4 < drawn.count(7) / 400 < 0.6
    with pytest.raises(ValueError, match="no group"):
        StratifiedSampler([np.array([], dtype=int)], [1.0], 0)


def test_planner_batches_follow_the_junction_share(junction_drive):
    planner = PlannerData(junction_drive, junction_share=0.75, entry_zone=(16, 8))
    other = set(planner.groups[-1].tolist())
    assert len(other) / len(junction_drive) > 0.7  # most of a drive is open road ...
    left, straight, right = (planner.groups[GROUPS.index(name)] for name in TURNS)
    other = planner.groups[GROUPS.index("other")]
    assert len(left) and len(straight) and not len(right)  # this drive never turns right
    picks = [k for k, _ in zip(planner.loader(8, 0, 0, 0).sampler, range(1200), strict=False)]
    for group in (left, straight, other):  # so the left, straight and open-road windows
        assert 0.28 < np.isin(picks, group).mean() < 0.39  # share its quarter: a third each
    batch = next(iter(planner.loader(8, 0, 0, 0)))
    assert batch["frames"].shape == (8, 3, 2, 32, 32, 3) and batch["waypoints"].shape == (
        8,
        1,
        4,
        2,
    )


def test_warmup_cosine():
    f = WarmupCosine(warmup=4, total=20, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(20) == pytest.approx(0.1) and 0.1 < f(12) < 1.0


def test_procedural_drives_cycle_weathers():
    config = parse_config(
        {
            "preset": "demo",
            "workdir": "w",
            "output": "o",
            "stages": {"1": {"iterations": 2, "batch_size": 1, "lr": 1e-3}},
            "data": {
                "towns": {"first": 1, "count": 2},
                "routes_per_town": 2,
                "weathers": ["rain", "fog"],
            },
        }
    )
    specs = drive_specs(config.data)
    assert [(s.town_seed, s.route_seed, s.weather) for s in specs] == [
        (1, 0, "rain"),
        (1, 1, "fog"),
        (2, 0, "rain"),
        (2, 1, "fog"),
    ]


def test_a_drive_can_start_at_rest_on_the_same_route():
    moving = ProceduralScene(DriveSpec(town_seed=1, route_seed=5, frames=40, size=(32, 32)))
    rest = ProceduralScene(
        DriveSpec(town_seed=1, route_seed=5, frames=40, size=(32, 32), start_at_rest=True)
    )
    assert rest.name == "town0001_route0005_rest_clear_noon" and rest.name != moving.name
    first, first_moving = rest.measurements(0), moving.measurements(0)
    assert first.speed == 0.0 and first_moving.speed >= 3.0
    assert (first.x, first.y, first.theta) == (first_moving.x, first_moving.y, first_moving.theta)
    speeds = [rest.measurements(t).speed for t in range(10)]
    assert all(b > a for a, b in zip(speeds, speeds[1:], strict=False))  # it sets off at once
    assert is_departure(first) and not is_departure(first_moving)
    assert not is_departure(rest.measurements(9))  # 2.6 m/s: under way


def test_padded_windows_start_at_the_first_frame_with_it_as_history():
    scene = ProceduralScene(
        DriveSpec(town_seed=1, route_seed=5, frames=30, size=(32, 32), start_at_rest=True)
    )
    full = DriveDataset([scene], TINY, context=3, steps=1)
    padded = DriveDataset([scene], TINY, context=3, steps=1, pad_start=True)
    assert full.index[0] == (0, 2) and padded.index[:3] == [(0, 0), (0, 1), (0, 2)]
    assert len(padded) == len(full) + 2
    first = padded[0]["frames"]  # (views, context, H, W, 3)
    assert np.array_equal(first[:, 0], first[:, 2]) and np.array_equal(first[:, 1], first[:, 2])
    second = padded[1]["frames"]
    assert np.array_equal(second[:, 0], first[:, 2]) and not np.array_equal(
        second[:, 2], first[:, 2]
    )
    assert np.array_equal(padded[2]["frames"], full[0]["frames"])
    assert padded[0]["speed"] == 0.0 and not padded[0]["prev_waypoints"].any()


def test_departures_are_their_own_planner_group_with_their_share():
    scenes = [
        ProceduralScene(
            DriveSpec(town_seed=t, route_seed=5, frames=60, size=(32, 32), start_at_rest=True)
        )
        for t in (1, 2)
    ]
    dataset = DriveDataset(scenes, TINY, context=2, steps=1, pad_start=True)
    planner = PlannerData(dataset, 0.0, (16, 8), departure_share=0.3)  # no junctions here
    departures = planner.groups[len(TURNS)]
    assert {dataset.index[k] for k in departures} >= {(0, 0), (1, 0)}  # both starts
    for k in departures:
        s, t = dataset.index[k]
        m = scenes[s].measurements(t)
        assert m.speed < 1.0 and np.linalg.norm(m.waypoints[-1]) > m.speed * 0.8
    picks = [k for k, _ in zip(planner.loader(8, 0, 0, 0).sampler, range(2000), strict=False)]
    assert 0.26 < np.isin(picks, departures).mean() < 0.34


def test_drive_specs_add_the_rest_start_routes_after_the_others():
    config = parse_config(
        {
            "preset": "demo",
            "workdir": "w",
            "output": "o",
            "stages": {"1": {"iterations": 2, "batch_size": 1, "lr": 1e-3}},
            "data": {"towns": [3], "routes_per_town": 2, "rest_start_routes": 2},
        }
    )
    specs = drive_specs(config.data)
    assert [(s.town_seed, s.route_seed, s.start_at_rest) for s in specs] == [
        (3, 0, False),
        (3, 1, False),
        (3, 2, True),
        (3, 3, True),
    ]


def test_drive_specs_add_recovery_drives_last_and_leave_the_others_as_they_were():
    base = {"towns": [3, 4], "routes_per_town": 2, "rest_start_routes": 1}
    weathers = ["clear_noon", "rain", "fog", "night"]

    def specs(**more):
        config = parse_config(
            {
                "preset": "demo",
                "workdir": "w",
                "output": "o",
                "stages": {"1": {"iterations": 2, "batch_size": 1, "lr": 1e-3}},
                "data": {**base, "weathers": weathers, **more},
            }
        )
        return drive_specs(config.data)

    without, with_recovery = specs(), specs(recovery_routes=2)
    assert with_recovery[: len(without)] == without
    assert [(s.town_seed, s.route_seed, s.recovery) for s in with_recovery[len(without) :]] == [
        (3, 3, True),
        (3, 4, True),
        (4, 3, True),
        (4, 4, True),
    ]
    assert not any(s.recovery for s in without) and not any(
        s.start_at_rest for s in with_recovery[len(without) :]
    )


def test_planner_windows_never_show_a_perturbation_and_the_flags_survive_the_cache(tmp_path):
    """Recovery drives: the windows whose waypoints (the next 8 frames' poses) the perturbed
    controls shaped are in no planner group; the 2 s after each perturbation are the "recovery"
    group, drawn at its share; the perturbed flags come back from an LMDrive root as they went
    in; a recovery share without recovery drives is refused."""
    from scenes.lmdrive import open_route, write_route

    spec = dict(town_seed=12, route_seed=5, frames=120, size=(32, 32))
    scene = ProceduralScene(DriveSpec(**spec, recovery=True))
    flags = np.array([scene.measurements(i).perturbed for i in range(len(scene))])
    starts = [i for i in range(1, len(flags)) if flags[i] and not flags[i - 1]]
    ends = [i for i in range(1, len(flags)) if not flags[i] and flags[i - 1]]
    assert len(starts) >= 2
    shown, recovering = perturbed_labels(scene)
    for s in starts:  # frame s's controls move the car to frame s + 1: the poses 7 frames ahead
        assert shown[s - 7 : s + 1].all() and not shown[s - 8]
    for e in ends:  # the first unperturbed frame after one and the next 19 are recovering
        assert recovering[e : min(e + 20, len(flags))].all() or shown[e : e + 20].any()
    assert not (shown & recovering).any() and shown.sum() > flags.sum()
    dataset = DriveDataset([scene], TINY, context=2, steps=1)
    groups = maneuver_groups(dataset, 16, 8, approach_m=30.0)
    drawn = {dataset.index[k][1] for g in groups.values() for k in g}
    assert drawn == {t for _, t in dataset.index if not shown[t]}
    assert {dataset.index[k][1] for k in groups["recovery"]} <= set(np.flatnonzero(recovering))
    assert len(groups["recovery"]) >= 10  # 31 here: a steering impulse and a brake in 120 frames
    planner = PlannerData(dataset, 0.0, (16, 8), recovery_share=0.5)
    picks = [k for k, _ in zip(planner.loader(8, 0, 0, 0).sampler, range(2000), strict=False)]
    assert 0.45 < np.isin(picks, groups["recovery"]).mean() < 0.55
    back = open_route(write_route(scene, tmp_path / scene.name))
    assert [back.measurements(i).perturbed for i in range(len(back))] == flags.tolist()
    plain = DriveDataset([ProceduralScene(DriveSpec(**spec))], TINY, context=2, steps=1)
    with pytest.raises(ConfigError, match="recovery_routes"):
        PlannerData(plain, 0.0, (16, 8), recovery_share=0.5)


def test_stage_one_recovery_drives_add_frames_whose_waypoints_are_the_drivers(tmp_path):
    """Stage 1's ``recovery_routes`` adds recovery drives to its frames and to no other stage's;
    its frame dataset leaves out exactly the frames whose waypoints show a perturbation."""
    config = parse_config(
        {
            "preset": "tiny",
            "workdir": str(tmp_path / "w"),
            "output": str(tmp_path / "o"),
            "data": {"towns": [3, 4], "routes_per_town": 1},
            "stages": {
                "1": {"iterations": 1, "batch_size": 1, "lr": 1e-3, "recovery_routes": 1},
                "2": {"iterations": 1, "batch_size": 1, "lr": 1e-3},
            },
        }
    )
    assert [s.recovery for s in drive_specs(config.stage_data(1))] == [False, False, True, True]
    assert config.stage_data(2) == config.data and config.data.recovery_routes == 0
    spec = dict(town_seed=12, route_seed=7, frames=120, size=(32, 32))
    pushed = ProceduralScene(DriveSpec(**spec, recovery=True))
    plain = ProceduralScene(DriveSpec(**spec))
    shown = perturbed_labels(pushed)[0]
    assert 0 < shown.sum() < len(pushed)
    kept = FrameDataset([plain, pushed], TINY, drop_perturbed=True).index
    assert [i for s, i in kept if s == 1] == np.flatnonzero(~shown).tolist()
    assert [i for s, i in kept if s == 0] == list(range(len(plain)))
    assert len(FrameDataset([plain, pushed], TINY).index) == 2 * len(pushed)


def test_render_cache_renders_again_only_drives_of_an_older_version(tmp_path):
    """A drive stamped by an older drive version renders again, others are left alone; a recovery
    drive also carries the perturbations' version, so changing those renders only recovery
    drives again."""
    data = parse_config(
        {
            "preset": "tiny",
            "workdir": "w",
            "output": "o",
            "stages": {"1": {"iterations": 2, "batch_size": 1, "lr": 1e-3}},
            "data": {
                "towns": [3],
                "routes_per_town": 2,
                "recovery_routes": 1,
                "frames": 24,
                "size": 32,
                "workers": 0,
            },
        }
    ).data
    root = tmp_path / "scenes"
    (root / "mine").mkdir(parents=True)  # not a drive of this cache: never touched
    render_cache(data, root)
    routes = sorted(p for p in root.glob("town0003_*") if p.is_dir())
    assert len(routes) == 3
    old, kept, recovery = routes
    stamps = [(r / VERSION_FILE).read_text().strip() for r in routes]
    assert stamps == [str(DRIVE_VERSION)] * 2 + [f"{DRIVE_VERSION}.{RECOVERY_VERSION}"]
    assert "recovery" in recovery.name
    (old / VERSION_FILE).write_text("1\n")  # rendered before notices carried the navigation
    (recovery / VERSION_FILE).write_text(f"{DRIVE_VERSION}\n")  # before the perturbations' change
    for route in routes:
        (route / "measurements" / "0000.json").write_text("{}")
    render_cache(data, root)
    assert [(r / VERSION_FILE).read_text().strip() for r in routes] == stamps
    assert (old / "measurements" / "0000.json").read_text() != "{}"  # rendered again
    assert (recovery / "measurements" / "0000.json").read_text() != "{}"
    assert (kept / "measurements" / "0000.json").read_text() == "{}"  # left alone
    assert (root / "mine").is_dir()
    assert len(open_root(root)) == 3


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("preset: tiny\nworkdir: w\noutput: o\nstages: {}\nlearning_rate: 1\n", "learning_rate"),
        (
            "preset: tiny\nworkdir: w\noutput: o\n"
            "stages: {'5': {iterations: 1, batch_size: 1, lr: 1}}\n",
            "stages.5",
        ),
        (
            "preset: huge\nworkdir: w\noutput: o\n"
            "stages: {'1': {iterations: 1, batch_size: 1, lr: 1}}\n",
            "huge",
        ),
        (
            "preset: tiny\nworkdir: w\noutput: o\n"
            "stages: {'1': {iterations: 2, batch_size: 1, lr: 1, warmup: 5}}\n",
            "warmup",
        ),
        (
            "preset: tiny\nworkdir: w\noutput: o\n"
            "stages: {'1': {iterations: 2, batch_size: 1, lr: 1, clipp: 1}}\n",
            "clipp",
        ),
        ("preset: tiny\n  bad: [yaml\n", "not valid YAML"),
        (
            "preset: tiny\nworkdir: w\noutput: o\nstages: {'2': {iterations: 2, batch_size: 1, "
            "lr: 1, planner: {junction_share: 0.8, departure_share: 0.3}}}\n",
            "junction_share \\+ departure_share \\+ approach_share \\+ recovery_share \\+ "
            "slowing_share \\+ stopping_share \\+ onpolicy_share must be <= 1",
        ),
        (
            "preset: tiny\nworkdir: w\noutput: o\nstages: {'2': {iterations: 2, batch_size: 1, "
            "lr: 1, planner: {recovery_share: 0.2}}}\n",
            "recovery_share needs recovery drives",
        ),
        (
            "preset: tiny\nworkdir: w\noutput: o\nstages: {'2': {iterations: 2, batch_size: 1, "
            "lr: 1, recovery_routes: 1}}\n",
            "recovery_routes exists in stage 1 only",
        ),
        (
            "preset: tiny\nworkdir: w\noutput: o\nstages: {'2': {iterations: 2, batch_size: 1, "
            "lr: 1, light_range: 10}}\n",
            "light_range exists in stage 1 only",
        ),
        (
            "preset: tiny\nworkdir: w\noutput: o\nstages: {'1': {iterations: 2, batch_size: 1, "
            "lr: 1, light_range: 0}}\n",
            "light_range",
        ),
    ],
)
def test_bad_recipes_raise_config_error(tmp_path, text, match):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_cli_rejects_a_bad_or_unconfigured_stage(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(
        "preset: tiny\nworkdir: w\noutput: o\n"
        "stages: {'1': {iterations: 1, batch_size: 1, lr: 1}}\n"
    )
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="verb"))
    with pytest.raises(ConfigError, match="--stage must be"):
        parse_stage("7")
    for stage, match in (("7", "--stage must be"), ("2", "stage 2 is not configured")):
        args = parser.parse_args(["train", "--stage", stage, "--config", str(path)])
        with pytest.raises(ConfigError, match=match):
            args.func(args)


def test_planner_batches_are_refused_before_stage_2():
    stages = {"1": {"iterations": 2, "batch_size": 1, "lr": 1e-3, "planner": {"batch_size": 4}}}
    with pytest.raises(ConfigError, match="stages 2 and 3 only"):
        parse_config({"preset": "tiny", "workdir": "w", "output": "o", "stages": stages})
    with pytest.raises(ConfigError, match="junction_share"):
        parse_config(
            {
                "preset": "tiny",
                "workdir": "w",
                "output": "o",
                "stages": {
                    "2": {
                        "iterations": 2,
                        "batch_size": 1,
                        "lr": 1e-3,
                        "planner": {"junction_share": 1.5},
                    }
                },
            }
        )


# every committed recipe but the paper's, which needs the pretrained component files
# (tests/test_paper_scale.py validates it with them)
LOCAL_RECIPES = sorted(str(p) for p in Path("jobs").glob("train_*.yaml") if p.stem != "train_paper")


@pytest.mark.parametrize("job", LOCAL_RECIPES)
def test_committed_training_recipes_validate(job):
    config = load_config(job)
    assert all(seed < 900 for seed in config.data.town_seeds())  # QA / demo towns are 901+
