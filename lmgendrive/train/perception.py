"""Stage 1, perception (LMDrive's recipe): BEV detection targets from ego-frame objects, the batch,
and the loss of the vision encoder's perception heads."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from lmgendrive.config import VisionConfig
from lmgendrive.frames import to_pixels
from lmgendrive.model import LMGenDrive
from lmgendrive.train.losses import LossOutput
from lmgendrive.vision import DET_CHANNELS, PerceptionOutput

OBJECT_COLUMNS = ("class", "x", "y", "yaw", "length", "width", "speed")


def build_bev_targets(
    objects: np.ndarray, config: VisionConfig, classes: Collection[int] | None = None
) -> np.ndarray:
    """LAV/LMDrive-style detection target (bev_size, bev_size, 8) from ego-frame objects.

    ``objects`` is (M, 7) with columns :data:`OBJECT_COLUMNS` (class id, x, y, yaw in radians
    relative to the ego heading, length, width, speed in m/s). The cell holding an object's centre
    gets ``[1, dx, dy, cos yaw, sin yaw, length / 2, width / 2, speed]`` (:data:`DET_CHANNELS`),
    ``dx, dy`` the centre's offset from the cell centre in cell units (x forward, y left). When
    several objects share a cell the one nearest the cell centre wins. ``classes`` keeps only those
    class ids (all by default); objects outside the grid are ignored.
    """
    objs = np.asarray(objects, dtype=np.float64).reshape(-1, len(OBJECT_COLUMNS))
    if classes is not None:
        objs = objs[np.isin(objs[:, 0].astype(np.int64), list(classes))]
    n = config.bev_size
    x_min, x_max, y_min, y_max = config.bev_range
    cx, cy = (x_max - x_min) / n, (y_max - y_min) / n
    target = np.zeros((n, n, len(DET_CHANNELS)), dtype=np.float32)
    best = np.full((n, n), np.inf)
    for _, x, y, yaw, length, width, speed in objs:
        fr, fc = (x_max - x) / cx, (y_max - y) / cy
        r, c = math.floor(fr), math.floor(fc)
        if not (0 <= r < n and 0 <= c < n):
            continue
        dx, dy = -(fr - r - 0.5), -(fc - c - 0.5)
        dist = dx * dx + dy * dy
        if dist >= best[r, c]:
            continue
        best[r, c] = dist
        target[r, c] = (1.0, dx, dy, math.cos(yaw), math.sin(yaw), length / 2, width / 2, speed)
    return target


@dataclass
class PerceptionBatch:
    """A stage-1 batch.

    frames: uint8 (B, V, H, W, 3), views in ``config.views`` order.
    detection: float (B, S, S, 8) from :func:`build_bev_targets`.
    waypoints: float (B, K, 2), ego frame, at t + 0.2 .. 0.8 s.
    light: int64 (B,) indices into :data:`LIGHT_CLASSES`.
    lane: float (B, 3) from :func:`lane_target`.
    near_light: int64 (B,) the light reader's class: the light's within :data:`NEAR_LIGHT_M`.
    """

    frames: torch.Tensor
    detection: torch.Tensor
    waypoints: torch.Tensor
    light: torch.Tensor
    lane: torch.Tensor
    near_light: torch.Tensor

    def to(self, device: torch.device) -> PerceptionBatch:
        return PerceptionBatch(*(getattr(self, f.name).to(device) for f in fields(self)))


# The light reader answers for the light that governs the car now: its state within this many
# metres of the stop line, "none" farther (InterFuser's and LMDrive's red-light labels hold in the
# light's trigger volume or within 8 m, where their experts brake). A far light is a pixel or two
# even in the centre view, and a reader asked about it learns that far lights are mostly red.
NEAR_LIGHT_M = 10.0


LANE_POSE, NO_LANE, LANE_UNKNOWN = 1.0, 0.0, -1.0  # what a lane target's third entry says
HEADING_SCALE = 5.0  # radians to the lane loss's units: 15 degrees weigh as 1.3 m of offset


def lane_target(offset: float, heading: float, is_junction: bool) -> np.ndarray:
    """float32 (3,) lane target of a frame: its lane offset (m) and heading error (rad) and
    :data:`LANE_POSE` where both are known; zeros and :data:`NO_LANE` in a junction box without
    them (no lane to keep there); zeros and :data:`LANE_UNKNOWN` elsewhere without them (not
    recorded: no lane loss)."""
    if np.isfinite(offset) and np.isfinite(heading):
        return np.array([offset, heading, LANE_POSE], np.float32)
    return np.array([0.0, 0.0, NO_LANE if is_junction else LANE_UNKNOWN], np.float32)


def lane_loss(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """The lane reader's terms on (N, 3) outputs and :func:`lane_target` rows: ``lane_pose``, L1
    of the offset plus :data:`HEADING_SCALE` x L1 of the heading error where the pose is known;
    ``in_lane``, binary cross-entropy of the in-lane logit where the frame is labelled (each 0
    where no frame of the batch is)."""
    pred, target = pred.float(), target.float()
    known = target[:, 2] == LANE_POSE
    labelled = target[:, 2] >= NO_LANE
    error = (pred[:, :2] - target[:, :2]).abs() * pred.new_tensor([1.0, HEADING_SCALE])
    pose = error[known].sum(1).mean() if known.any() else pred.sum() * 0.0
    in_lane = (
        F.binary_cross_entropy_with_logits(pred[labelled, 2], known[labelled].float())
        if labelled.any()
        else pred.sum() * 0.0
    )
    return {"lane_pose": pose, "in_lane": in_lane}


def detection_loss(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """LAV/LMDrive detection terms on (N, S, S, 8) tensors.

    ``det``: binary cross-entropy on the cell probability, each cell weighted by how wrong it is
    (``sigmoid(±logit)``, normalised), ``loc`` / ``ori`` / ``box`` / ``speed``: L1 on occupied
    cells, normalised by the mean occupancy.
    """
    pred, target = pred.flatten(1, 2).float(), target.flatten(1, 2).float()
    prob = target[..., 0]
    weight = torch.sigmoid(pred[..., 0] * (1 - 2 * prob)).detach()
    bce = F.binary_cross_entropy_with_logits(pred[..., 0], prob, reduction="none")
    occupancy = prob.mean().clamp_min(1e-7)

    def l1(sl: slice) -> torch.Tensor:
        return (prob[..., None] * (pred[..., sl] - target[..., sl]).abs()).mean() / occupancy

    return {
        "det": (weight * bce).mean() / weight.mean().clamp_min(1e-7),
        "loc": l1(slice(1, 3)),
        "ori": l1(slice(3, 5)),
        "box": l1(slice(5, 7)),
        "speed": l1(slice(7, 8)),
    }


def perception_terms(
    out: PerceptionOutput, batch: PerceptionBatch
) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage-1 loss: 0.5 det + 0.5 waypoint L1 + 0.05 object speed + 0.1 light CE (LMDrive weights),
    + 0.5 (lane pose + in lane) where the encoder has a lane reader (:func:`lane_loss`), + 0.5 of
    the light reader's CE on :attr:`PerceptionBatch.near_light` where it has one.

    ``det`` itself is 0.4 det + 0.2 loc + 0.2 box + 0.2 ori.
    """
    terms = detection_loss(out.detection, batch.detection)
    det = 0.4 * terms["det"] + 0.2 * terms["loc"] + 0.2 * terms["box"] + 0.2 * terms["ori"]
    wp = F.l1_loss(out.waypoints.float(), batch.waypoints.float())
    light = F.cross_entropy(out.light_logits.float(), batch.light)
    total = 0.5 * det + 0.5 * wp + 0.05 * terms["speed"] + 0.1 * light
    logs = {f"det_{k}": v.item() for k, v in terms.items()}
    if out.lane is not None:
        lane = lane_loss(out.lane, batch.lane)
        total = total + 0.5 * (lane["lane_pose"] + lane["in_lane"])
        logs.update({k: v.item() for k, v in lane.items()})
    if out.near_light is not None:
        near_light = F.cross_entropy(out.near_light.float(), batch.near_light)
        total = total + 0.5 * near_light
        logs["near_light"] = near_light.item()
    logs.update(detection=det.item(), waypoints=wp.item(), light=light.item(), total=total.item())
    return total, logs


def perception_loss(model: LMGenDrive, batch: PerceptionBatch) -> LossOutput:
    """Stage 1: detection + waypoint + traffic-light loss
    (:func:`perception_terms`)."""
    weight = model.vision.proj.weight  # the encoder may sit on the accelerator alone (stage 1)
    pixels = to_pixels(batch.frames, model.config.image_size, weight.device, "frames")
    model.check_views(pixels, "frames")
    out = model.vision.perceive(model.vision(pixels.to(weight.dtype)))
    loss, terms = perception_terms(out, batch)
    return LossOutput(loss, terms)
