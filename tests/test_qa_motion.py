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


@pytest.mark.parametrize(("shift", "expected"), [(2, "left"), (-2, "right"), (0, "straight")])
def test_video_adherence_reads_the_front_video_not_the_plan(tmp_path, shift, expected):
    from qa.config import QAConfig
    from qa.extract import FeatureRunner, Recorded, SampleTask
    from qa.result import QAResult
    from qa.run import Figures
    from schemas.scene import VIEWS
    from storage.read import Sample

    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (64, 400, 3), dtype=np.uint8), (0, 0), 2.0)
    front = np.stack([texture[:, 200 - shift * i : 264 - shift * i] for i in range(17)])
    video = np.repeat(front[None], 3, axis=0)  # (V, 1 + 16, H, W, 3); the front view pans
    still = np.zeros((2, 4, 2), np.float32)  # a plan that does not move
    task = SampleTask("k", "t", "procedural", "{}", 5, 16, "turn", expected, False, 0, "")
    sample = Sample("k", {}, video[:, 1:], video[:, :1], still, np.zeros((2, 3)), np.zeros(2))
    real = Recorded(video[:, 1:], video[:, 0], still)
    config = QAConfig(str(tmp_path), str(tmp_path / "qa"), metrics=("instruction_adherence",))
    record = FeatureRunner(config)._record(task, list(VIEWS), sample, real, 8)
    assert record["video_predicted"] == expected and record["predicted"] == "straight"
    rows = Figures(config, "cpu", {}).trajectory_rows(16, [record], QAResult([], {}, {}))
    by_source = {r["extractor"].split(":")[0]: r["value"] for r in rows}
    assert by_source == {
        "instruction adherence (plan)": float(expected == "straight"),
        "instruction adherence (video)": 1.0,
    }
