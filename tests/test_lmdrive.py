"""LMDrive-format reader and writer: round trip, real-LMDrive conversion, laziness, bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from fake_scene import FakeScene

from scenes.lmdrive import files, open_root, open_route, write_index, write_route
from scenes.lmdrive.conventions import wrap
from schemas.errors import BadInputError, SceneFormatError

ROUTE = "routes_town01_short_w3_11_23_12_00_00"


def _span_dicts(spans) -> list[dict]:
    return [
        {"ins": s.instruction.to_dict(), "start": s.start_frame, "end": s.end_frame} for s in spans
    ]


def _all_files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def written(tmp_path: Path) -> Path:
    return write_route(FakeScene(n=8), tmp_path / "data" / "route_a")


# --------------------------------------------------------------------------- round trip


def test_round_trip_is_exact(tmp_path: Path) -> None:
    scene = FakeScene(n=12)
    out = write_route(scene, tmp_path / "route")
    assert not (tmp_path / "route.partial").exists()
    back = open_route(out)
    assert (len(back), back.views, back.size, back.fps) == (12, scene.views, scene.size, scene.fps)
    assert (back.name, back.tags) == (scene.name, scene.tags)
    for i in range(len(scene)):
        want, got = scene.images(i), back.images(i)
        assert all(
            np.array_equal(want[v], got[v]) and got[v].dtype == np.uint8 for v in scene.views
        )
        m, r = scene.measurements(i), back.measurements(i)
        assert r.to_dict() == m.to_dict()
        np.testing.assert_allclose(r.waypoints, m.waypoints, atol=1e-4)
        assert r.waypoints.shape == (4, 2) and r.waypoints.dtype == np.float32
        assert (r.objects, r.instruction, r.instruction_completed) == (
            m.objects,
            m.instruction,
            m.instruction_completed,
        )
    want_spans = sorted(scene.instructions(), key=lambda s: (s.start_frame, s.end_frame))
    assert _span_dicts(back.instructions()) == _span_dicts(want_spans)


def test_write_is_deterministic(tmp_path: Path) -> None:
    a = write_route(FakeScene(n=4), tmp_path / "a" / "route")
    b = write_route(FakeScene(n=4), tmp_path / "b" / "route")
    assert _all_files(a) == _all_files(b)


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="frame 3"):
        write_route(FakeScene(n=6, fail_at=3), tmp_path / "route")
    assert list(tmp_path.iterdir()) == []


def test_existing_route_needs_overwrite(written: Path) -> None:
    with pytest.raises(BadInputError, match="route_a"):
        write_route(FakeScene(n=3), written)
    write_route(FakeScene(n=3), written, overwrite=True)
    assert len(open_route(written)) == 3
    assert sorted(p.name for p in written.parent.iterdir()) == ["route_a"]


def test_written_lmdrive_keys_convert_back(written: Path) -> None:
    """Without the ``lmgd`` key the LMDrive keys alone give the same scene (up to float error)."""
    for path in (written / "measurements").iterdir():
        raw = json.loads(path.read_text())
        assert {
            "gps_x",
            "gps_y",
            "x",
            "y",
            "theta",
            "speed",
            "future_waypoints",
            "affected_light_id",
        } <= raw.keys()
        del raw["lmgd"]
        path.write_text(json.dumps(raw))
    scene, back = FakeScene(n=8), open_route(written)
    for i in range(len(scene)):
        m, r = scene.measurements(i), back.measurements(i)
        np.testing.assert_allclose(
            [r.x, r.y, r.theta, r.speed, r.steer], [m.x, m.y, m.theta, m.speed, m.steer], atol=1e-9
        )
        np.testing.assert_allclose(
            r.waypoints, m.waypoints, atol=1e-4
        )  # frames, then future_waypoints
        assert (r.light_state, r.weather, r.is_junction) == (
            m.light_state,
            m.weather,
            m.is_junction,
        )
        assert (r.instruction, r.instruction_completed) == (m.instruction, m.instruction_completed)
        for got, want in zip(r.objects, m.objects, strict=True):
            assert (got.cls, got.state) == (want.cls, want.state)
            np.testing.assert_allclose(
                [got.x, got.y, got.yaw, got.length, got.width, got.height, got.vx, got.vy],
                [want.x, want.y, want.yaw, want.length, want.width, want.height, want.vx, want.vy],
                atol=1e-9,
            )


def test_write_index_and_open_root(tmp_path: Path) -> None:
    routes = [write_route(FakeScene(n=n, name=f"r{n}"), tmp_path / f"r{n}") for n in (3, 5)]
    index = write_index(tmp_path, routes)
    assert index.read_text() == "r3/ 3\nr5/ 5\n"
    assert [(s.name, len(s)) for s in open_root(tmp_path)] == [("r3", 3), ("r5", 5)]


# --------------------------------------------------------------------------- plain LMDrive data


def _write_jpg(path: Path, h: int = 32, w: int = 48, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))


def _lmdrive_measurement(i: int, compass: float) -> dict:
    """The ego drives 0.5 m per frame (5 m/s) along ``compass``; the recorded speed says 4 m/s."""
    d_east, d_north = math.sin(compass), math.cos(compass)
    east, north = 50.0 + 0.5 * i * d_east, -100.0 + 0.5 * i * d_north
    route = [[north + k * d_north, east + k * d_east, 4] for k in range(-1, 20)]
    return {
        "gps_x": north, "gps_y": east, "x": east, "y": -north, "theta": compass,
        "speed": 4.0, "target_speed": 6.5, "x_command": route[10][0], "y_command": route[10][1],
        "command": 4, "gt_command": 4, "near_node_x": route[2][0], "near_node_y": route[2][1],
        "far_node_x": route[10][0], "far_node_y": route[10][1], "future_waypoints": route,
        "steer": 0.0, "throttle": 0.5, "brake": False, "weather": {"cloudiness": 30.0},
        "weather_id": 3, "is_junction": i == 2, "should_slow": 0, "should_brake": 0,
        "affected_light_id": 300, "is_red_light_present": [], "is_vehicle_present": [],
        "is_bike_present": [], "is_lane_vehicle_present": [], "is_junction_vehicle_present": [],
        "is_pedestrian_present": [], "is_stop_sign_present": [],
    }  # fmt: skip


def _lmdrive_actors(m: dict) -> dict:
    """CARLA coordinates (x east, y south) as ``collect_actor_data`` stores them; ego heading
    north."""
    x, y = m["x"], m["y"]
    return {
        "100": {"loc": [x, y, 0.0], "ori": [0.0, -1.0, 0.0], "box": [2.4, 1.0],
                "vel": [0.0, -5.0, 0.0], "tpe": 0},
        "101": {"loc": [x + 3.0, y - 10.0, 0.0], "ori": [-1.0, 0.0, 0.0], "box": [2.25, 1.0],
                "vel": [-2.0, 0.0, 0.0], "tpe": 0},
        "200": {"loc": [x - 5.0, y - 5.0, 0.0], "ori": [0.0, 1.0, 0.0], "box": [0.3, 0.3],
                "vel": [0.0, 1.0, 0.0], "tpe": 1},
        "300": {"loc": [x + 5.0, y - 30.0, 4.0], "ori": [0.0, 1.0, 0.0], "vel": [0.0, 0.0, 0.0],
                "tpe": 2, "sta": 0, "taigger_loc": [1.0, 0.0, 0.0],
                "trigger_ori": [0.0, 1.0, 0.0], "trigger_box": [1.5, 2.0]},
    }  # fmt: skip


def _make_lmdrive_root(root: Path, n: int = 12, compass: float = 0.0) -> Path:
    """A dataset root with one route recorded the way LMDrive's agents and tools write it."""
    route = root / ROUTE
    for i in range(n):
        for view in ("front", "left", "right", "rear"):
            _write_jpg(route / f"rgb_{view}" / f"{i:04d}.jpg")
        m = _lmdrive_measurement(i, compass)
        for sub, data in (("measurements", m), ("actors_data", _lmdrive_actors(m))):
            (route / sub).mkdir(exist_ok=True)
            (route / sub / f"{i:04d}.json").write_text(json.dumps(data, indent=4))
    (root / "dataset_index.txt").write_text(f"{ROUTE}/ {n}\n")
    common = {"town_id": 1, "weather_id": 3, "route_frames": n, "bad_case": "False"}
    nav = [
        {"route_path": f"{ROUTE}/", "start_frame": 0, "end_frame": 7,
         "instruction": "Turn-01-R-dis", "instruction_id": 3, "instruction_args": [12], **common},
        {"route_path": f"{ROUTE}/", "start_frame": 8, "end_frame": 11,
         "instruction": "Follow-02-s1", "instruction_id": 38, "instruction_args": [], **common},
        {"route_path": "routes_town02_tiny_w1_01_01_00_00_00/", "start_frame": 0, "end_frame": 40,
         "instruction": "Other-01", "instruction_id": 60, "instruction_args": [], **common},
    ]  # fmt: skip
    (root / "navigation_instruction_list.txt").write_text(
        "".join(json.dumps(r) + "\n" for r in nav)
    )
    notice = {
        "frame_id": 5,
        "instruction_id": 52,
        "instruction": "Notice-03",
        "route_path": f"{ROUTE}/",
    }
    (root / "notice_instruction_list.json").write_text(json.dumps({f"{ROUTE}/": [notice]}))
    return route


@pytest.fixture
def lmdrive_root(tmp_path: Path) -> Path:
    root = tmp_path / "dataset"
    _make_lmdrive_root(root)
    return root


@pytest.fixture
def instruction_dict(tmp_path: Path) -> Path:
    path = tmp_path / "instruction_dict.json"
    templates = {"3": ["After [x] meters, turn right.", "In [x] meters, go right."],
                 "38": ["Keep following this road."], "52": ["Mind the pedestrians."]}  # fmt: skip
    path.write_text(json.dumps(templates))
    return path


def test_reads_plain_lmdrive_route(lmdrive_root: Path, instruction_dict: Path) -> None:
    (scene,) = open_root(lmdrive_root, instruction_dict=instruction_dict)
    assert (scene.name, len(scene), scene.size, scene.views) == (
        ROUTE,
        12,
        (32, 48),
        ("left", "front", "right"),
    )
    assert scene.tags == {"source": "lmdrive", "town_id": 1, "weather_id": 3}
    assert {v: img.shape for v, img in scene.images(4).items()} == dict.fromkeys(
        scene.views, (32, 48, 3)
    )

    m = scene.measurements(0)
    assert (m.x, m.y) == (50.0, -100.0)
    assert m.theta == pytest.approx(math.pi / 2)  # compass 0 = facing north
    assert (m.speed, m.brake, m.weather, m.light_state) == (4.0, 0.0, "CloudySunset", "red")
    assert m.light_distance == math.inf  # red 30 m ahead, but not yet "present" for the expert
    # later frames moved 0.5 m per frame straight ahead: 1..4 m at t + 0.2..0.8 s
    np.testing.assert_allclose(m.waypoints, [[1, 0], [2, 0], [3, 0], [4, 0]], atol=1e-9)
    # last frame: no later frames, so the route walked at the recorded 4 m/s
    np.testing.assert_allclose(
        scene.measurements(11).waypoints, [[0.8, 0], [1.6, 0], [2.4, 0], [3.2, 0]], atol=1e-9
    )
    assert scene.measurements(2).is_junction

    vehicle, walker, light = m.objects  # the ego (actor 100) is dropped
    assert (vehicle.cls, vehicle.length, vehicle.width) == ("vehicle", 4.5, 2.0)
    assert (vehicle.x, vehicle.y) == pytest.approx((10.0, -3.0))
    assert vehicle.yaw == pytest.approx(math.pi / 2)  # facing west = to the ego's left
    assert (vehicle.vx, vehicle.vy) == pytest.approx((0.0, 2.0))
    assert (walker.cls, walker.x, walker.y) == (
        "pedestrian",
        pytest.approx(5.0),
        pytest.approx(5.0),
    )
    assert abs(walker.yaw) == pytest.approx(math.pi)  # facing south, towards the ego
    assert (light.cls, light.state, light.x, light.y) == (
        "traffic_light",
        "red",
        pytest.approx(30.0),
        pytest.approx(-5.0),
    )


def test_a_present_red_light_is_at_the_stop_line_and_nothing_else_has_a_distance() -> None:
    from scenes.lmdrive.to_contract import light_distance

    assert light_distance({"is_red_light_present": [300]}) == 0.0
    assert light_distance({"is_red_light_present": []}) == math.inf
    assert light_distance({}) == math.inf


def test_plain_lmdrive_instructions(lmdrive_root: Path, instruction_dict: Path) -> None:
    scene = open_route(lmdrive_root / ROUTE, instruction_dict=instruction_dict)
    spans = [
        (s.instruction.text, s.instruction.category, s.start_frame, s.end_frame)
        for s in scene.instructions()
    ]
    assert spans == [
        ("After 12 meters, turn right.", "turn", 0, 7),
        ("Mind the pedestrians.", "notice", 5, 5),
        ("Keep following this road.", "follow", 8, 11),
    ]
    turn = scene.measurements(7)
    assert (turn.instruction.instruction_id, turn.instruction.args, turn.instruction_completed) == (
        3,
        {"x": 12},
        True,
    )
    assert not scene.measurements(6).instruction_completed
    assert scene.measurements(8).instruction.text == "Keep following this road."
    without_dict = open_route(lmdrive_root / ROUTE)
    assert without_dict.measurements(0).instruction.text == "Turn-01-R-dis"


@pytest.mark.parametrize(
    ("compass", "theta"), [(math.pi / 2, 0.0), (math.pi, -math.pi / 2), (1.5 * math.pi, math.pi)]
)
def test_heading_conversion(tmp_path: Path, compass: float, theta: float) -> None:
    scene = open_route(
        _make_lmdrive_root(tmp_path, compass=compass)
    )  # instructions from the parent
    assert len(scene.instructions()) == 3
    for i in (0, 11):
        m = scene.measurements(i)
        assert abs(wrap(m.theta - theta)) < 1e-9
        assert np.allclose(m.waypoints[:, 1], 0.0, atol=1e-9) and np.all(m.waypoints[:, 0] > 0)


def test_reads_stacked_rgb_full(written: Path) -> None:
    want = [open_route(written).images(i) for i in range(8)]
    (written / "rgb_full").mkdir()
    for i, views in enumerate(want):
        stacked = np.concatenate(
            [views["front"], views["left"], views["right"], np.zeros_like(views["front"])]
        )
        cv2.imwrite(
            str(written / "rgb_full" / f"{i:04d}.png"), cv2.cvtColor(stacked, cv2.COLOR_RGB2BGR)
        )
    for view in ("front", "left", "right"):
        shutil.rmtree(written / f"rgb_{view}")
    (written / "lmgd_scene.json").unlink()  # the size must come from the stacked image itself
    scene = open_route(written)
    assert (len(scene), scene.size) == (8, (32, 48))
    for i in range(8):
        got = scene.images(i)
        assert all(np.array_equal(got[v], want[i][v]) for v in ("left", "front", "right"))


# --------------------------------------------------------------------------- laziness


def test_open_reads_no_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    route = write_route(FakeScene(n=150), tmp_path / "long")
    reads: list[str] = []
    real = files.read_bytes
    monkeypatch.setattr(files, "read_bytes", lambda p: reads.append(p.parent.name) or real(p))
    scene = open_route(route)
    assert len(scene) == 150
    assert not [r for r in reads if r.startswith("rgb_") or r in ("measurements", "actors_data")]
    reads.clear()
    scene.images(77)
    assert sorted(reads) == ["rgb_front", "rgb_left", "rgb_right"]
    reads.clear()
    scene.measurements(77)
    assert reads == ["measurements"]


def test_plain_route_open_reads_only_headers(
    lmdrive_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[Path] = []
    real = files.read_bytes
    monkeypatch.setattr(files, "read_bytes", lambda p: reads.append(p) or real(p))
    open_root(lmdrive_root)
    assert [p.name for p in reads] == [
        "dataset_index.txt",
        "navigation_instruction_list.txt",
        "notice_instruction_list.json",
    ]


# --------------------------------------------------------------------------- bad input


def _corrupt(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")


def test_missing_view_folder(written: Path) -> None:
    shutil.rmtree(written / "rgb_left")
    with pytest.raises(SceneFormatError, match="rgb_left"):
        open_route(written)


def test_corrupt_image_raises_when_read(written: Path) -> None:
    _corrupt(written / "rgb_front" / "0003.png")
    scene = open_route(written)
    scene.images(2)
    with pytest.raises(SceneFormatError, match="0003.png"):
        scene.images(3)


def test_corrupt_first_image_of_plain_route_raises_on_open(lmdrive_root: Path) -> None:
    _corrupt(lmdrive_root / ROUTE / "rgb_right" / "0000.jpg")
    with pytest.raises(SceneFormatError, match=r"rgb_right.0000\.jpg"):
        open_root(lmdrive_root)


def test_image_of_wrong_size(written: Path) -> None:
    _write_jpg(written / "rgb_left" / "0001.png", h=16, w=16)
    with pytest.raises(SceneFormatError, match=r"0001\.png.*16x16"):
        open_route(written).images(1)


def test_first_image_of_wrong_size_in_plain_route(lmdrive_root: Path) -> None:
    _write_jpg(lmdrive_root / ROUTE / "rgb_left" / "0000.jpg", h=16, w=16)
    with pytest.raises(SceneFormatError, match=r"rgb_left.0000\.jpg"):
        open_root(lmdrive_root)


def test_malformed_measurements(written: Path) -> None:
    (written / "measurements" / "0002.json").write_text('{"x": 1.0,')
    scene = open_route(written)
    with pytest.raises(SceneFormatError, match=r"0002\.json.*malformed JSON"):
        scene.measurements(2)


def test_plain_measurements_missing_key(lmdrive_root: Path) -> None:
    path = lmdrive_root / ROUTE / "measurements" / "0004.json"
    raw = json.loads(path.read_text())
    del raw["theta"]
    path.write_text(json.dumps(raw))
    with pytest.raises(SceneFormatError, match=r"0004\.json.*'theta'"):
        open_route(lmdrive_root / ROUTE).measurements(4)


@pytest.mark.parametrize(
    "name", ["navigation_instruction_list.txt", "notice_instruction_list.json"]
)
def test_malformed_instruction_files(written: Path, name: str) -> None:
    path = written / name
    path.write_text(path.read_text()[:-5] + "\n")
    with pytest.raises(SceneFormatError, match=name):
        open_route(written)


def test_malformed_root_instruction_file(lmdrive_root: Path) -> None:
    with (lmdrive_root / "navigation_instruction_list.txt").open("a") as f:
        f.write("{not json}\n")
    with pytest.raises(SceneFormatError, match=r"navigation_instruction_list\.txt:4"):
        open_root(lmdrive_root)


def test_index_points_to_missing_route(lmdrive_root: Path) -> None:
    (lmdrive_root / "dataset_index.txt").write_text(
        f"{ROUTE}/ 12\nroutes_town05_long_w9_gone/ 30\n"
    )
    with pytest.raises(SceneFormatError, match=r"dataset_index\.txt:2.*routes_town05_long_w9_gone"):
        open_root(lmdrive_root)


def test_index_frame_count_mismatch(lmdrive_root: Path) -> None:
    (lmdrive_root / "dataset_index.txt").write_text(f"{ROUTE}/ 13\n")
    with pytest.raises(SceneFormatError, match=rf"dataset_index\.txt:1.*13.*{ROUTE}.*12"):
        open_root(lmdrive_root)


def test_malformed_index_line(lmdrive_root: Path) -> None:
    (lmdrive_root / "dataset_index.txt").write_text(f"{ROUTE}/twelve\n")
    with pytest.raises(SceneFormatError, match=r"dataset_index\.txt:1"):
        open_root(lmdrive_root)


def test_views_with_different_counts(written: Path) -> None:
    (written / "rgb_right" / "0007.png").unlink()
    with pytest.raises(SceneFormatError, match=r"rgb_right/ 7"):
        open_route(written)


def test_gap_in_frames(written: Path) -> None:
    (written / "rgb_right" / "0002.png").unlink()
    with pytest.raises(SceneFormatError, match=r"rgb_right.0002\.png: missing frame"):
        open_route(written)


def test_measurement_count_mismatch(written: Path) -> None:
    (written / "measurements" / "0007.json").unlink()
    with pytest.raises(SceneFormatError, match=r"measurements: holds 7 frames"):
        open_route(written)


def test_expected_frames_mismatch(written: Path) -> None:
    with pytest.raises(SceneFormatError, match="expected_frames"):
        open_route(written, expected_frames=9)


def test_instruction_span_outside_route(written: Path) -> None:
    path = written / "navigation_instruction_list.txt"
    path.write_text(path.read_text().replace('"end_frame": 7', '"end_frame": 70'))
    with pytest.raises(SceneFormatError, match=r"navigation_instruction_list\.txt:2.*0\.\.7"):
        open_route(written)
