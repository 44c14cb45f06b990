"""Trajectory figures from waypoints and yaw measured on video."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from qa.motion import step_yaw, trajectory, video_yaw


def _arc(steps: int, deg_per_step: float, speed: float = 5.0) -> np.ndarray:
    """Waypoints (steps, 4, 2) of a constant-rate turn, each step in its own ego frame."""
    t = np.array([0.2, 0.4, 0.6, 0.8])
    yaw = np.radians(deg_per_step) * t / 0.8
    heading = (
        np.concatenate([[0.0], yaw[:-1]]) + np.radians(deg_per_step) * 0.1
    )  # mid-segment headings
    pts = np.stack([np.cumsum(np.cos(heading)), np.cumsum(np.sin(heading))], axis=1) * speed * 0.2
    return np.repeat(pts[None], steps, axis=0)


@pytest.mark.parametrize(("deg", "expected"), [(22.5, "left"), (-22.5, "right"), (3.0, "straight")])
def test_trajectory_maneuver(deg, expected):
    traj = trajectory(_arc(4, deg))
    assert traj.maneuver() == expected
    assert math.copysign(1, traj.lateral_m) == math.copysign(1, deg)
    assert abs(traj.heading_deg) == pytest.approx(4 * abs(deg), rel=0.35)


def test_stopped_ego_has_no_heading_and_odd_turns_are_unclear():
    assert step_yaw(np.zeros((3, 4, 2))).tolist() == [0.0, 0.0, 0.0]
    assert trajectory(np.zeros((3, 4, 2))).maneuver() == "straight"
    swerve = np.array(
        [[[0.5, -1.0], [1.0, -2.0], [1.5, -3.0], [2.0, -2.0]]]
    )  # ends right, heading left
    assert trajectory(swerve).maneuver() == "unclear"


def test_video_yaw_sign_and_size_on_a_panning_camera():
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (64, 400, 3), dtype=np.uint8), (0, 0), 2.0)
    shift = 2  # the view moves left over the scene by 2 px per frame: a left yaw
    frames = np.stack([texture[:, 200 - shift * i : 264 - shift * i] for i in range(17)])
    yaw = video_yaw(frames, 8)
    focal = 32 / math.tan(math.radians(50))
    assert yaw.shape == (2,)
    np.testing.assert_allclose(yaw, 8 * shift / focal, rtol=0.1)
    np.testing.assert_allclose(video_yaw(frames[::-1], 8), -8 * shift / focal, rtol=0.1)
