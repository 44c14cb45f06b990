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
