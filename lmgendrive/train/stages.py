"""What each stage trains and on which loss; collated loader batches -> model batches.

0: the VAE (autoencoder loss on every view of each frame); afterwards the latent scale is
calibrated. 1: the vision encoder and its perception heads. 2: single step, encoder frozen.
3: multi-step sequences (2-3 steps, a curriculum), generator frozen, its sampled videos fed back.
Stages 2-3 may add a planner-only batch per iteration, drawn by maneuver (``StageConfig.planner``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from lmgendrive.config import SamplerConfig
from lmgendrive.frames import to_pixels
from lmgendrive.model import DriveBatch, LMGenDrive, LossOutput
from lmgendrive.train.config import StageConfig
from lmgendrive.vision import PerceptionBatch

CALIBRATION_FRAMES = 32  # frames (x views) used to calibrate the latent scale after stage 0


def sequence_steps(stage: StageConfig, step: int) -> int:
    """Stage-3 curriculum: the sequence length at iteration ``step`` (equal shares of the list)."""
    share = len(stage.sequence_steps) * step // stage.iterations
    return stage.sequence_steps[min(share, len(stage.sequence_steps) - 1)]


def drive_batch(batch: dict, steps: int) -> DriveBatch:
    """A :class:`DriveBatch` of the first ``steps`` steps of a collated drive batch (planner
    batches may carry ``tokens`` instead of ``frames`` and no ``future_frames``)."""
    future = batch.get("future_frames")
    return DriveBatch(frames=batch.get("frames"), instructions=list(batch["instruction"]), speed=batch["speed"],
                      prev_waypoints=batch["prev_waypoints"], waypoints=batch["waypoints"][:, :steps],
                      completed=batch["completed"][:, :steps],
                      future_frames=None if future is None else future[:, :steps], tokens=batch.get("tokens"))


class StageObjective(nn.Module):
    """The loss of one stage as a module, so data-parallel wrappers see a forward call."""

    def __init__(self, model: LMGenDrive, stage: int, sampler: SamplerConfig | None = None,
                 straight_previous: float = 0.0):
        super().__init__()
        self.model, self.stage, self.sampler, self.straight_previous = model, stage, sampler, straight_previous

    def forward(self, batch: dict, steps: int = 1, plan: dict | None = None) -> LossOutput:
        """The stage's loss on ``batch`` (``steps`` steps in stage 3), plus the planner loss on
        ``plan`` when the stage has planner batches."""
        device = self.model.device
        if self.stage == 0:
            return self.model.autoencoder_loss(batch["frames"].to(device))
        if self.stage == 1:
            return self.model.perception_loss(PerceptionBatch(batch["frames"], batch["detection"], batch["waypoints"],
                                                              batch["light"]).to(device))
        drive = drive_batch(batch, steps).to(device)
        out = (self.model.single_step_loss(drive) if self.stage == 2
               else self.model.multistep_loss(drive, self.sampler))
        if plan is None:
            return out
        plan = straighten_previous_action(plan, self.straight_previous)
        planned = self.model.planner_loss(drive_batch(plan, 1).to(device))
        total = out.loss + planned.loss
        terms = {**out.terms, **{k: v for k, v in planned.terms.items() if k != "total"}, "total": total.item()}
        return LossOutput(total, terms)


def objective(model: LMGenDrive, stage: int, config: StageConfig) -> StageObjective:
    """The stage's objective; stage 3 samples its fed-back videos with ``config.sampler_steps`` steps
    from ``config.sampler_strength`` (and ``sampler_warp_start``)."""
    sampler = (replace(model.config.sampler, steps=config.sampler_steps, strength=config.sampler_strength,
                       warp_start=config.sampler_warp_start) if stage == 3 else None)
    return StageObjective(model, stage, sampler, config.planner.straight_previous if config.planner else 0.0)


def straighten_previous_action(batch: dict, probability: float) -> dict:
    """``batch`` with each sample's previous action replaced, with ``probability`` (global torch RNG),
    by driving straight ahead over the same distances.

    At a junction entry the expert's action of 0.8 s earlier can already bend the way it will turn, so
    a planner trained on it learns to continue that bend instead of reading the instruction; the
    generation loop gives it its own earlier action, which bends only if it read the instruction then.
    """
    if probability <= 0:
        return batch
    prev = batch["prev_waypoints"]
    straight = torch.stack([prev.norm(dim=-1), torch.zeros_like(prev[..., 0])], dim=-1)
    pick = torch.rand(prev.shape[0]) < probability
    return {**batch, "prev_waypoints": torch.where(pick[:, None, None], straight, prev)}


@torch.no_grad()
def finish_stage(model: LMGenDrive, stage: int, dataset: Dataset) -> None:
    """After stage 0: set the generator's latent scale from frames spread evenly over ``dataset``."""
    if stage != 0:
        return
    picks = np.linspace(0, len(dataset) - 1, min(CALIBRATION_FRAMES, len(dataset))).round().astype(int)
    frames = torch.stack([torch.as_tensor(dataset[int(i)]["frames"]) for i in picks])
    pixels = to_pixels(frames, model.config.image_size, model.device).flatten(0, 1)
    model.generator.calibrate_latent_scale(pixels)
