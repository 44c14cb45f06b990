"""Moving the context frames by the planned ego motion (lmgendrive.ego_warp) on rendered drives."""

from __future__ import annotations

import math

import numpy as np
import torch

from lmgendrive.ego_warp import poses_from_waypoints, warp_views
from scenes.procedural.drive import DriveSpec, ProceduralScene
from schemas.scene import FPS, WAYPOINT_TIMES


def _arc(speed: float, radius: float, slip: float, times) -> torch.Tensor:
    """Positions (1, len(times), 2) on a circle left of the start, driven at ``speed`` with the
    car's heading ``slip`` radians off the path's direction (so the path, in the ego frame, is
    turned by it)."""
    a = np.array([speed * t / radius for t in times])
    path = np.stack([radius * np.sin(a), radius * (1 - np.cos(a))], axis=-1)
    c, s = math.cos(slip), math.sin(slip)
    return torch.tensor(path @ np.array([[c, s], [-s, c]]), dtype=torch.float32)[None]


def test_poses_follow_the_arc_and_its_heading_whatever_the_slip_angle():
    for slip in (0.0, 0.15):
        poses = poses_from_waypoints(_arc(8.0, 20.0, slip, WAYPOINT_TIMES), frames=8, fps=FPS)[0]
        t = np.arange(1, 9) / FPS
        expected = _arc(8.0, 20.0, slip, t)[0]
        np.testing.assert_allclose(poses[:, :2].numpy(), expected.numpy(), atol=0.02)
        np.testing.assert_allclose(
            poses[:, 2].numpy(), 8.0 * t / 20.0, atol=0.01
        )  # heading turned, not chord


def test_a_car_standing_still_has_no_motion():
    poses = poses_from_waypoints(torch.zeros(2, 4, 2), frames=8, fps=FPS)
    assert poses.shape == (2, 8, 3) and poses.abs().max() == 0


def test_without_motion_the_frames_stay_as_they_are():
    pixels = torch.rand(2, 3, 3, 24, 32)
    out = warp_views(pixels, torch.zeros(2, 5, 3), ("left", "front", "right"))
    assert out.shape == (2, 3, 5, 3, 24, 32)
    torch.testing.assert_close(out, pixels[:, :, None].expand_as(out), atol=1e-5, rtol=0)


def _true_poses(scene: ProceduralScene, t: int, frames: int) -> torch.Tensor:
    m0, out = scene.measurements(t), []
    c, s = math.cos(-m0.theta), math.sin(-m0.theta)
    for k in range(1, frames + 1):
        m = scene.measurements(t + k)
        dx, dy = m.x - m0.x, m.y - m0.y
        out.append(
            [c * dx - s * dy, s * dx + c * dy, math.remainder(m.theta - m0.theta, 2 * math.pi)]
        )
    return torch.tensor([out], dtype=torch.float32)


def test_the_moved_frames_are_nearer_the_real_future_than_the_still_frame():
    """Rendered drives, moving and turning: the context frame moved by the real ego motion (and by
    the motion the expert's waypoints plan) is nearer the frames the renderer draws there than the
    context frame held still, in every view; moved the wrong way it is farther."""
    scene = ProceduralScene(DriveSpec(3, 0, "clear_noon", 120, (64, 64)))
    moved_err, plan_err, still_err, wrong_err = [], [], [], []
    for t in range(20, 100, 16):
        last = (
            torch.tensor(np.stack([scene.images(t)[v] for v in scene.views]))
            .permute(0, 3, 1, 2)
            .float()[None]
        )
        real = torch.tensor(
            np.stack([[scene.images(t + k)[v] for k in range(1, 9)] for v in scene.views])
        )
        real = real.permute(0, 1, 4, 2, 3).float()[None]  # (1, V, F, 3, H, W)
        true = _true_poses(scene, t, 8)
        planned = poses_from_waypoints(torch.tensor(scene.measurements(t).waypoints)[None], 8, FPS)
        for poses, errs in ((true, moved_err), (planned, plan_err), (-true, wrong_err)):
            errs.append(
                (warp_views(last, poses, scene.views) - real).abs().mean(dim=(0, 2, 3, 4, 5))
            )
        still_err.append((last[:, :, None] - real).abs().mean(dim=(0, 2, 3, 4, 5)))
    moved, plan, still, wrong = (
        torch.stack(e).mean(0) for e in (moved_err, plan_err, still_err, wrong_err)
    )
    assert (moved < 0.9 * still).all() and (plan < 0.92 * still).all(), (moved, plan, still)
    assert (wrong > still).all(), (wrong, still)
