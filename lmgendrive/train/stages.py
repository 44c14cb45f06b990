"""What each stage trains (:func:`set_stage`) and on which loss; collated loader batches -> model
batches.

0: the VAE (autoencoder loss on every view of each frame); afterwards the latent scale is
calibrated. 1: the vision encoder and its perception heads. 2: single step, encoder frozen.
3: multi-step sequences (2-3 steps, a curriculum), generator frozen, its sampled videos fed back.
4 (not in the paper): the world generator alone on its own rollouts, the planner frozen.
Stages 2-3 may add a planner-only batch per iteration, drawn by maneuver (``StageConfig.planner``).
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from lmgendrive.frames import to_pixels
from lmgendrive.model import LMGenDrive
from lmgendrive.train.config import StageConfig
from lmgendrive.train.losses import (
    DriveBatch,
    LossOutput,
    autoencoder_loss,
    multistep_loss,
    planner_loss,
    rollout_loss,
    single_step_loss,
)
from lmgendrive.train.perception import PerceptionBatch, perception_loss
from schemas.errors import ConfigError
from schemas.sampler import SamplerConfig

CALIBRATION_FRAMES = 32  # frames (x views) used to calibrate the latent scale after stage 0


def set_stage(
    model: LMGenDrive, stage: int, readers_only: bool = False, reader_branch_only: bool = False
) -> list[nn.Parameter]:
    """Set ``requires_grad`` of ``model`` for a training stage and return the trainable parameters.

    0: the VAE alone (presets trained from scratch). 1: the vision encoder and its heads, or with
    ``readers_only`` its readers alone (lane and light; the rest frozen, BatchNorm and dropout in
    eval).
    2: vision encoder frozen; Q-Former, adapter, LLM, queries, action head, fusion, UNet (and
    CLIP unless it is pretrained) train, or with ``reader_branch_only`` the action head's reader
    branch alone. 3: as 2 but the whole world generator (CLIP, fusion,
    UNet, VAE) is frozen; gradients still flow through it to the LLM side. 4: the world generator's
    conditioning and UNet (and CLIP unless it is pretrained) alone; the VAE and the planning side
    stay frozen.
    """
    if stage not in (0, 1, 2, 3, 4):
        raise ConfigError(f"training stage must be 0, 1, 2, 3 or 4, got {stage}")
    model.requires_grad_(False)
    if stage == 0:
        model.generator.vae.requires_grad_(True)
    elif stage == 1 and readers_only:
        vision = model.vision
        readers = [r for r in (vision.lane_reader, vision.light_reader) if r is not None]
        if not readers:
            raise ConfigError("readers_only: this model's vision encoder has no reader")
        model.vision.freeze()
        for reader in readers:
            reader.requires_grad_(True)
    elif stage == 1:
        model.vision.frozen = False
        model.vision.requires_grad_(True)
    elif reader_branch_only:
        if model.llm.reader_branch is None:
            raise ConfigError("reader_branch_only: this model's action head has no reader branch")
        model.vision.freeze()
        model.llm.reader_branch.requires_grad_(True)
    else:
        model.vision.freeze()
        if stage in (2, 3):
            model.compressor.requires_grad_(True)
            model.llm.requires_grad_(True)
        if stage in (2, 4):
            _train_generator(model)
    return [p for p in model.parameters() if p.requires_grad]


def place(model: LMGenDrive, stage: int, device: torch.device) -> None:
    """Put on ``device`` what the stage uses: stage 1 the vision encoder alone (the rest of a
    paper-scale model would not fit beside its optimizer for nothing), the others everything."""
    (model.vision if stage == 1 else model).to(device)


def _train_generator(model: LMGenDrive) -> None:
    """The conditioner (CLIP unless pretrained) and the UNet train."""
    model.conditioner.requires_grad_(True)
    model.conditioner.clip.requires_grad_(model.config.pretrained.clip is None)
    # the conditioner reads CLIP's patch tokens, never its pooled output: a parameter that gets no
    # gradient would stall data-parallel training (DDP's reducer)
    for name, module in model.conditioner.clip.named_modules():
        if name.endswith("post_layernorm"):
            module.requires_grad_(False)
    model.generator.unet.requires_grad_(True)


def sequence_steps(stage: StageConfig, step: int) -> int:
    """Stage-3 curriculum: the sequence length at iteration ``step`` (equal shares of the list)."""
    share = len(stage.sequence_steps) * step // stage.iterations
    return stage.sequence_steps[min(share, len(stage.sequence_steps) - 1)]


def drive_batch(batch: dict, steps: int) -> DriveBatch:
    """A :class:`DriveBatch` of the first ``steps`` steps of a collated drive batch (planner
    batches may carry ``tokens`` instead of ``frames`` and no ``future_frames``)."""
    future = batch.get("future_frames")
    return DriveBatch(
        frames=batch.get("frames"),
        instructions=list(batch["instruction"]),
        speed=batch["speed"],
        prev_waypoints=batch["prev_waypoints"],
        waypoints=batch["waypoints"][:, :steps],
        completed=batch["completed"][:, :steps],
        future_frames=None if future is None else future[:, :steps],
        tokens=batch.get("tokens"),
        readers=batch.get("readers"),
    )


class StageObjective(nn.Module):
    """The loss of one stage as a module, so data-parallel wrappers see a forward call."""

    def __init__(
        self,
        model: LMGenDrive,
        stage: int,
        sampler: SamplerConfig | None = None,
        straight_previous: float = 0.0,
        context_noise: float = 0.0,
        ego_status_dropout: float = 0.0,
        brake_weight: float = 0.0,
    ):
        super().__init__()
        self.model, self.stage, self.sampler = model, stage, sampler
        self.straight_previous, self.context_noise = straight_previous, context_noise
        self.ego_status_dropout, self.brake_weight = ego_status_dropout, brake_weight

    def forward(self, batch: dict | None, steps: int = 1, plan: dict | None = None) -> LossOutput:
        """The stage's loss on ``batch`` (``steps`` steps in stages 3-4), plus the planner loss on
        ``plan`` when the stage has planner batches (the planner loss alone without ``batch``)."""
        device = self.model.device
        if batch is None:
            if plan is None:
                raise ValueError("a stage iteration needs a batch or a planner batch")
            return planner_loss(self.model, self._planner_batch(plan).to(device), self.brake_weight)
        if self.stage == 0:
            return autoencoder_loss(self.model, batch["frames"].to(device))
        if self.stage == 1:
            perception = PerceptionBatch(*(batch[f.name] for f in fields(PerceptionBatch)))
            return perception_loss(self.model, perception.to(self.model.vision.proj.weight.device))
        drive = drive_batch(batch, steps).to(device)
        if self.stage == 2:
            out = single_step_loss(self.model, drive, self.context_noise)
        elif self.stage == 3:
            out = multistep_loss(self.model, drive, self.sampler)
        else:
            out = rollout_loss(self.model, drive, self.sampler, self.context_noise)
        if plan is None:
            return out
        planned = planner_loss(self.model, self._planner_batch(plan).to(device), self.brake_weight)
        total = out.loss + planned.loss
        terms = {
            **out.terms,
            **{k: v for k, v in planned.terms.items() if k != "total"},
            "total": total.item(),
        }
        return LossOutput(total, terms)

    def _planner_batch(self, plan: dict) -> DriveBatch:
        plan = straighten_previous_action(plan, self.straight_previous)
        return drive_batch(drop_ego_status(plan, self.ego_status_dropout), 1)


def objective(model: LMGenDrive, stage: int, config: StageConfig) -> StageObjective:
    """The stage's objective; stages 3-4 sample their fed-back videos with the model's sampler as
    :meth:`StageConfig.fed_back` overrides it."""
    sampler = (
        config.fed_back(stage, model.config.preset == "paper").over(
            model.config.sampler, f"stage {stage} sampler"
        )
        if stage in (3, 4)
        else None
    )
    return StageObjective(
        model,
        stage,
        sampler,
        config.planner.straight_previous if config.planner else 0.0,
        config.context_noise,
        config.planner.ego_status_dropout if config.planner else 0.0,
        config.planner.brake_weight if config.planner else 0.0,
    )


def straighten_previous_action(batch: dict, probability: float) -> dict:
    """``batch`` with each sample's previous action replaced, with ``probability``
    (global torch RNG), by driving straight ahead over the same distances.

    At a junction entry the expert's action of 0.8 s earlier can already bend the way it will turn,
    so a planner trained on it learns to continue that bend instead of reading the instruction; the
    generation loop gives it its own earlier action, which bends only if it read the instruction
    then.
    """
    if probability <= 0:
        return batch
    prev = batch["prev_waypoints"]
    straight = torch.stack([prev.norm(dim=-1), torch.zeros_like(prev[..., 0])], dim=-1)
    pick = torch.rand(prev.shape[0]) < probability
    return {**batch, "prev_waypoints": torch.where(pick[:, None, None], straight, prev)}


def drop_ego_status(batch: dict, probability: float) -> dict:
    """``batch`` with each sample's ego status (its speed and the path driven over the last step)
    set to zero with ``probability`` (global torch RNG), as at rest; not in the paper.

    Fed its speed and driven path, a planner learns to continue them (keep the speed until the
    expert's braking shows in the path) and never starts braking for a red light itself: behaviour
    cloning's inertia (Codevilla et al. 2019; ChauffeurNet's past-motion dropout, Li et al. 2024 on
    ego status). Windows without it must read speed and stops from the camera history.
    """
    if probability <= 0:
        return batch
    speed, prev = batch["speed"], batch["prev_waypoints"]
    keep = (torch.rand(speed.shape[0]) >= probability).to(speed.device)
    return {
        **batch,
        "speed": torch.where(keep, speed, torch.zeros_like(speed)),
        "prev_waypoints": torch.where(keep[:, None, None], prev, torch.zeros_like(prev)),
    }


@torch.no_grad()
def finish_stage(model: LMGenDrive, stage: int, dataset: Dataset, config: StageConfig) -> None:
    """After stage 0: set the generator's latent scale from frames spread evenly over
    ``dataset``. After stage 4: the sampler its generator trained on becomes the model's."""
    if stage == 4:
        sampler = config.fed_back(4).over(model.config.sampler, "stage 4 sampler")
        model.config = model.config.model_copy(update={"sampler": sampler})
        return
    if stage != 0:
        return
    picks = (
        np.linspace(0, len(dataset) - 1, min(CALIBRATION_FRAMES, len(dataset))).round().astype(int)
    )
    frames = torch.stack([torch.as_tensor(dataset[int(i)]["frames"]) for i in picks])
    pixels = to_pixels(frames, model.config.image_size, model.device).flatten(0, 1)
    model.generator.calibrate_latent_scale(pixels)
