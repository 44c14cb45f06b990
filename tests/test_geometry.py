import numpy as np
import pytest

from scenes.procedural.geometry import Polyline, arc, line, to_ego


def test_polyline_arc_length_and_projection():
    p = Polyline(line(np.array([0.0, 0.0]), np.array([10.0, 0.0])))
    p.extend(arc(np.array([10.0, 5.0]), np.array([10.0, 0.0]), np.array([15.0, 5.0]), ccw=True))
    assert p.length == pytest.approx(10 + np.pi * 5 / 2, rel=1e-2)
    assert np.allclose(p.point(5.0), [5.0, 0.0])
    assert p.heading(2.0) == pytest.approx(0.0)
    assert p.heading(p.length - 0.1) == pytest.approx(np.pi / 2, abs=0.05)
    assert p.project(np.array([4.0, 0.7]), s_hint=3.0) == pytest.approx(4.0, abs=1e-6)


def test_to_ego_frame_is_x_forward_y_left():
    # ego at (10, 0) facing north: a point further north is ahead, a point west is to the left
    pts = to_ego(np.array([[10.0, 5.0], [7.0, 0.0]]), 10.0, 0.0, np.pi / 2)
    assert np.allclose(pts, [[5.0, 0.0], [0.0, 3.0]])


def test_lane_pose_is_offset_left_positive_and_heading_error_wrapped():
    north = Polyline(line(np.array([0.0, 0.0]), np.array([0.0, 20.0])))
    # 1 m west of a line going north is 1 m to its left; facing north-west is turned left
    lateral, heading = north.lane_pose(5.0, -1.0, 5.0, np.pi / 2 + 0.2)
    assert lateral == pytest.approx(1.0) and heading == pytest.approx(0.2)
    lateral, heading = north.lane_pose(5.0, 0.5, 5.0, np.pi / 2 - 0.3)
    assert lateral == pytest.approx(-0.5) and heading == pytest.approx(-0.3)
    # theta and the line's heading on either side of +-pi: the error is the short way round
    west = Polyline(line(np.array([0.0, 0.0]), np.array([-20.0, 0.0])))
    assert west.lane_pose(5.0, -5.0, 0.0, -np.pi + 0.1)[1] == pytest.approx(0.1)
