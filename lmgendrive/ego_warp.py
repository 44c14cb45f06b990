"""Moving the context frame by the ego's planned motion: a first guess of the future frames.

The generator may start each step from the last context frame noised part-way (``sampler.strength``
< 1). That frame stands still; the car does not. :func:`warp_views` re-projects the context frames
of all views to where the cameras will be at each future frame, so the noised start already moves as
the plan says and the UNet only has to repair what the re-projection gets wrong (disocclusions, the
sides of objects, anything that moves on its own).

Geometry is the seed-scene camera rig (``schemas.scene``: pinhole cameras of ``CAMERA_FOV_DEG`` at
``CAMERA_POSITION``, level, turned by ``VIEW_YAW_DEG``; LMDrive's rig) and a depth guess per pixel:
the road plane below the horizon, capped at ``max_depth``, and ``max_depth`` above it. Each target
pixel is looked up in whichever context view sees its point (the same view first), so what enters a
side view's edge comes from the front view. Written here because no maintained library re-projects a
calibrated multi-camera rig by planar ego motion; the sampling is
``torch.nn.functional.grid_sample``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from schemas.scene import CAMERA_FOV_DEG, CAMERA_POSITION, VIEW_YAW_DEG, WAYPOINT_TIMES

STILL = 0.5  # m/s
NEAR = 0.5  # metres: points closer than this to a camera's image plane are not looked up in it
DEFAULT_MAX_DEPTH = 12.0  # metres; see checkpoints/README.md for how it was chosen


def poses_from_waypoints(
    waypoints: torch.Tensor, frames: int, fps: float, times: Sequence[float] = WAYPOINT_TIMES
) -> torch.Tensor:
    """Ego poses (B, F, 3) as (x, y, yaw) at ``1/fps .. frames/fps`` s, in the ego frame of time 0.

    A least-squares cubic in time through the origin and ``waypoints`` (B, K, 2) at ``times`` gives
    the positions; the yaw is how far the path's direction has turned since time 0 (zero while
    either end is slower than ``STILL`` m/s). Not the chord angle: cars here (as in CARLA) drive
    with a slip angle, so heading and path direction differ by a near-constant offset that cancels.
    """
    knots = torch.tensor([0.0, *times], dtype=torch.float64, device=waypoints.device)
    degree = min(3, len(times))
    basis = knots[:, None] ** torch.arange(degree + 1, device=waypoints.device)  # (K+1, D+1)
    path = torch.cat([waypoints.new_zeros(waypoints.shape[0], 1, 2), waypoints], dim=1).double()
    coef = torch.linalg.pinv(basis) @ path  # (B, D+1, 2)
    t = (
        torch.arange(frames + 1, dtype=torch.float64, device=waypoints.device) / fps
    )  # 0 .. frames/fps
    powers = torch.arange(degree + 1, device=waypoints.device)
    position = (t[:, None] ** powers) @ coef  # (B, F+1, 2)
    velocity = (powers[1:] * t[:, None] ** (powers[1:] - 1)) @ coef[:, 1:]
    direction = torch.atan2(velocity[..., 1], velocity[..., 0])
    turned = torch.remainder(direction[:, 1:] - direction[:, :1] + math.pi, 2 * math.pi) - math.pi
    moving = velocity.norm(dim=-1) > STILL
    yaw = torch.where(moving[:, 1:] & moving[:, :1], turned, torch.zeros_like(turned))
    return torch.cat([position[:, 1:], yaw[..., None]], dim=-1).float()


def _view_angles(views: Sequence[str]) -> torch.Tensor:
    """Counter-clockwise yaw of each view's optical axis (``VIEW_YAW_DEG`` uses CARLA's + right)."""
    return torch.tensor([-math.radians(VIEW_YAW_DEG[v]) for v in views])


def _target_points(views: Sequence[str], h: int, w: int, max_depth: float, device: torch.device):
    """Per target view, the guessed ego-frame ground position (V, H, W, 2) of each pixel's point and
    its height below the camera (V, H, W)."""
    focal = (w / 2) / math.tan(math.radians(CAMERA_FOV_DEG / 2))
    v, u = torch.meshgrid(
        torch.arange(h, device=device) + 0.5, torch.arange(w, device=device) + 0.5, indexing="ij"
    )
    xc, yc = (u - w / 2) / focal, (v - h / 2) / focal
    depth = torch.where(
        yc > 1e-6, CAMERA_POSITION[2] / yc.clamp_min(1e-6), torch.full_like(yc, max_depth)
    )
    depth = depth.clamp(max=max_depth)  # along the optical axis
    angles = _view_angles(views).to(device)[:, None, None]
    side = xc * depth
    x = CAMERA_POSITION[0] + torch.cos(angles) * depth + torch.sin(angles) * side
    y = CAMERA_POSITION[1] + torch.sin(angles) * depth - torch.cos(angles) * side
    return torch.stack([x, y], dim=-1), (yc * depth).expand(len(views), h, w), focal


def warp_views(
    pixels: torch.Tensor,
    poses: torch.Tensor,
    views: Sequence[str],
    max_depth: float = DEFAULT_MAX_DEPTH,
) -> torch.Tensor:
    """The context frames ``pixels`` (B, V, C, H, W) seen from the ``poses`` (B, F, 3) of
    :func:`poses_from_waypoints`: (B, V, F, C, H, W)."""
    b, nv, c, h, w = pixels.shape
    f = poses.shape[1]
    points, below, focal = _target_points(views, h, w, max_depth, pixels.device)
    x, y, yaw = (p[:, :, None, None, None] for p in poses.float().unbind(-1))  # (B, F, 1, 1, 1)
    px, py = points[..., 0], points[..., 1]  # (V, H, W): where each target pixel's point is, then
    sx = torch.cos(yaw) * px - torch.sin(yaw) * py + x - CAMERA_POSITION[0]  # in the ego frame of
    sy = (
        torch.sin(yaw) * px + torch.cos(yaw) * py + y - CAMERA_POSITION[1]
    )  # time 0, from the camera
    angles = _view_angles(views).to(pixels.device)
    sampled, seen = [], []
    for s in range(nv):  # look every target pixel up in every context view
        ahead = torch.cos(angles[s]) * sx + torch.sin(angles[s]) * sy  # (B, F, V, H, W)
        side = torch.sin(angles[s]) * sx - torch.cos(angles[s]) * sy
        safe = ahead.clamp_min(NEAR)
        gx = (w / 2 + focal * side / safe) / w * 2 - 1
        gy = (h / 2 + focal * below / safe) / h * 2 - 1
        grid = torch.stack([gx, gy], dim=-1).clamp(-2.0, 2.0).reshape(b * f * nv, h, w, 2)
        source = pixels[:, s, None].float().expand(b, f * nv, c, h, w).reshape(b * f * nv, c, h, w)
        sampled.append(
            F.grid_sample(
                source, grid, mode="bicubic", padding_mode="border", align_corners=False
            ).reshape(b, f, nv, c, h, w)
        )
        seen.append(((ahead > NEAR) & (gx.abs() <= 1) & (gy.abs() <= 1))[:, :, :, None])
    # each target view's own lookup first (clamped at the border where it does not see the point),
    # then the first other view that sees it
    out = torch.stack([sampled[v][:, :, v] for v in range(nv)], dim=2)
    found = torch.stack([seen[v][:, :, v] for v in range(nv)], dim=2)
    for s in range(nv):
        take = seen[s] & ~found
        out = torch.where(take, sampled[s], out)
        found = found | seen[s]
    return out.transpose(1, 2).to(pixels.dtype)


def compose_poses(step_poses: torch.Tensor) -> torch.Tensor:
    """Poses (B, S*F, 3) in the ego frame of the first step's start, from per-step poses
    (B, S, F, 3), each step's in the ego frame where that step began (the previous step's last
    pose): what a multi-step plan means from the frame before it."""
    b, s, f, _ = step_poses.shape
    x = step_poses.new_zeros(b)
    y, yaw = step_poses.new_zeros(b), step_poses.new_zeros(b)
    out = []
    for k in range(s):
        px, py, pyaw = step_poses[:, k].unbind(-1)  # (B, F)
        c, s_ = torch.cos(yaw)[:, None], torch.sin(yaw)[:, None]
        gx, gy = x[:, None] + c * px - s_ * py, y[:, None] + s_ * px + c * py
        gyaw = yaw[:, None] + pyaw
        out.append(torch.stack([gx, gy, gyaw], dim=-1))
        x, y, yaw = gx[:, -1], gy[:, -1], gyaw[:, -1]
    return torch.cat(out, dim=1)


def warp_only(
    last: torch.Tensor,
    waypoints: torch.Tensor,
    frames_per_step: int,
    fps: float,
    views: Sequence[str],
) -> torch.Tensor:
    """The "warp only" baseline: the clean context frames ``last`` (B, V, C, H, W) moved, with no
    generation, to every frame of a multi-step plan ``waypoints`` (B, S, K, 2), each step's in the
    ego frame where it began: (B, V, S*F, C, H, W). Every frame is one re-projection of ``last``,
    never of a re-projected frame."""
    b, s = waypoints.shape[:2]
    step = poses_from_waypoints(waypoints.flatten(0, 1), frames_per_step, fps)
    return warp_views(last, compose_poses(step.unflatten(0, (b, s))), views)
