"""LMGenDrive training losses (:mod:`lmgendrive.train.losses`) and stage freezing on the tiny
preset: stage gradients and loss decrease on a fixed batch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch

from driving.control import WaypointController
from lmgendrive.checkpoint import build_untrained
from lmgendrive.model import LMGenDrive
from lmgendrive.train import losses as losses_module
from lmgendrive.train.losses import (
    DriveBatch,
    LossOutput,
    autoencoder_loss,
    brake_loss,
    heading_loss,
    multistep_loss,
    planner_loss,
    single_step_loss,
)
from lmgendrive.train.perception import PerceptionBatch, build_bev_targets, perception_loss
from lmgendrive.train.stages import set_stage
from schemas.errors import BadInputError, ConfigError


def _uint8(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def _drive_batch(steps: int, b: int = 2) -> DriveBatch:
    wp = torch.tensor([[2.0 * (i + 1), 0.1 * i] for i in range(4)])
    return DriveBatch(
        frames=_uint8((b, 3, 3, 32, 32, 3), 1),
        instructions=["Turn left at the next intersection.", "Stop the car and wait."][:b],
        speed=torch.tensor([5.0, 0.0])[:b],
        prev_waypoints=wp.expand(b, 4, 2).clone(),
        waypoints=wp.expand(b, steps, 4, 2).clone(),
        completed=torch.tensor([[0.0] * steps, [1.0] * steps])[:b],
        future_frames=_uint8((b, steps, 3, 8, 32, 32, 3), 2),
    )


def _perception_batch(model: LMGenDrive) -> PerceptionBatch:
    objects = np.array([[0, 6.0, 1.5, 0.2, 4.5, 2.0, 5.0], [1, 14.0, -6.0, 1.5, 0.8, 0.8, 1.2]])
    target = torch.from_numpy(build_bev_targets(objects, model.config.vision))
    return PerceptionBatch(
        frames=_uint8((2, 3, 32, 32, 3), 3),
        detection=target.expand(2, -1, -1, -1).clone(),
        waypoints=torch.tensor([[[1.0, 0.0], [2.0, 0.0], [3.0, 0.1], [4.0, 0.2]]] * 2),
        light=torch.tensor([1, 3]),
        lane=torch.tensor([[0.5, 0.1, 1.0], [0.0, 0.0, 0.0]]),
        near_light=torch.tensor([1, 0]),
    )


def test_stage3_two_step_loss_reaches_llm_and_adapters_not_the_generator():
    torch.manual_seed(0)
    model = build_untrained("tiny").train()
    trainable = set_stage(model, 3)
    assert trainable and all(p.requires_grad for p in trainable)
    out = multistep_loss(model, _drive_batch(steps=2))
    assert set(out.terms) == {"waypoints", "completion", "diffusion", "total"}
    out.loss.backward()

    def grad_norm(module: torch.nn.Module) -> float:
        return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)

    for name, module in [
        ("llm backbone", model.llm.model),
        ("world queries", model.llm.world_queries),
        ("action head", model.llm.action_head),
        ("q-former", model.compressor.qformer),
        ("adapter", model.compressor.adapter),
    ]:
        module = module if isinstance(module, torch.nn.Module) else torch.nn.ParameterList([module])
        assert grad_norm(module) > 0, name
    for frozen in (model.generator.unet, model.generator.vae, model.conditioner, model.vision):
        assert all(p.grad is None for p in frozen.parameters())


def test_stage3_gradient_flows_back_through_the_generated_video(monkeypatch):
    """The video generated at step 1 (input of step 2 only) receives gradient from step 2's loss."""
    torch.manual_seed(0)
    model = build_untrained("tiny").train()
    set_stage(model, 3)
    videos = []
    sample = losses_module.sample_frames

    def keep(*args, **kwargs):
        video = sample(*args, **kwargs)
        video.retain_grad()
        videos.append(video)
        return video

    monkeypatch.setattr(losses_module, "sample_frames", keep)
    multistep_loss(model, _drive_batch(steps=2)).loss.backward()
    assert len(videos) == 1 and videos[0].requires_grad
    assert float(videos[0].grad.abs().sum()) > 0


def _trainable(model: LMGenDrive, stage: int) -> set[str]:
    """Two-level name prefixes of the parameters ``set_stage(stage)`` makes trainable."""
    params = {id(p) for p in set_stage(model, stage)}
    return {".".join(n.split(".")[:2]) for n, p in model.named_parameters() if id(p) in params}


def test_stages_select_parameters():
    model = build_untrained("tiny")
    assert _trainable(model, 0) == {"generator.vae"}
    assert {n.split(".")[0] for n in _trainable(model, 1)} == {"vision"}
    stage2 = _trainable(model, 2)
    assert {"generator.unet", "conditioner.clip", "llm.model", "compressor.qformer"} <= stage2
    assert "generator.vae" not in stage2 and not any(n.startswith("vision") for n in stage2)
    model.train()
    assert model.vision.frozen and not model.vision.training  # BatchNorm statistics stay fixed
    stage3 = _trainable(model, 3)
    assert "llm.model" in stage3 and not any(
        n.startswith(("generator", "conditioner", "vision")) for n in stage3
    )
    stage4 = _trainable(model, 4)
    assert {"generator.unet", "conditioner.clip"} <= stage4 and not any(
        n.startswith(("generator.vae", "vision", "llm", "compressor")) for n in stage4
    )
    with pytest.raises(ConfigError):
        set_stage(model, 5)


def _decreases(
    model: LMGenDrive,
    loss_fn: Callable[[], LossOutput],
    stage: int,
    steps: int = 6,
    lr: float = 2e-3,
) -> tuple[float, float]:
    params = set_stage(model, stage)
    model.train()
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps + 1):
        torch.manual_seed(0)  # same noise, timesteps and dropout each time: a fixed objective
        out = loss_fn()
        losses.append(float(out.loss))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return losses[0], losses[-1]


@pytest.mark.parametrize("stage", [0, 1, 2, 3, "planner"])
def test_each_loss_decreases_on_a_fixed_batch(stage):
    torch.manual_seed(0)
    model = build_untrained("tiny")
    loss_fn = {
        0: lambda: autoencoder_loss(model, _uint8((6, 32, 32, 3), 4)),
        1: lambda: perception_loss(model, _perception_batch(model)),
        2: lambda: single_step_loss(model, _drive_batch(steps=1)),
        3: lambda: multistep_loss(model, _drive_batch(steps=2)),
        "planner": lambda: planner_loss(model, _drive_batch(steps=1)),
    }[stage]
    first, last = _decreases(model, loss_fn, 3 if stage == "planner" else stage)
    assert last < 0.9 * first, (first, last)


def test_heading_loss_is_the_angle_between_trajectory_segments():
    ahead = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0]]])
    angle = 0.3
    turned = ahead @ torch.tensor(
        [[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]], dtype=torch.float32
    )
    assert float(heading_loss(ahead, ahead)) == pytest.approx(0.0, abs=1e-6)
    assert float(heading_loss(turned, ahead)) == pytest.approx(
        angle, abs=1e-5
    )  # every segment off by 0.3 rad
    assert float(heading_loss(-ahead, ahead)) == pytest.approx(np.pi, abs=1e-5)
    standing = torch.zeros(1, 4, 2)
    assert float(heading_loss(turned, standing)) == 0.0  # a standing target has no heading to match
    predicted = torch.zeros(1, 4, 2, requires_grad=True)  # zero-length predicted segments
    heading_loss(predicted, ahead).backward()
    assert torch.isfinite(predicted.grad).all()


def _straight_plan(speed: float, ratio: float) -> torch.Tensor:
    """(1, 4, 2) waypoints 0.2 s apart straight ahead at ``ratio`` x ``speed``."""
    gap = ratio * speed * 0.2
    return torch.tensor([[[gap * (k + 1), 0.0] for k in range(4)]])


def test_brake_loss_charges_a_plan_on_the_wrong_side_of_the_controllers_brake_threshold():
    speed = torch.tensor([8.0])
    stop, coast, hard = (_straight_plan(8.0, r) for r in (0.82, 0.93, 0.85))
    brakes = [WaypointController().step(p[0].numpy(), 8.0).brake == 1.0 for p in (stop, coast)]
    assert brakes == [True, False]  # LMDrive's controller: the stop brakes, the coast does not
    threshold = 1 / 1.1
    assert float(brake_loss(coast, stop, speed)) == pytest.approx(0.93 - (threshold - 0.03), 1e-4)
    assert float(brake_loss(hard, stop, speed)) == 0.0  # past the threshold by the margin
    cruise = _straight_plan(8.0, 0.98)
    assert float(brake_loss(_straight_plan(8.0, 0.89), cruise, speed)) == pytest.approx(
        threshold + 0.03 - 0.89, 1e-4
    )  # brakes where the target does not
    assert float(brake_loss(cruise, cruise, speed)) == 0.0
    assert float(brake_loss(coast, cruise, speed)) > 0.0  # within the margin of braking
    assert float(brake_loss(coast, stop, torch.tensor([0.5]))) == 0.0  # a standing car: no charge
    both = brake_loss(torch.cat([coast, hard]), torch.cat([stop, stop]), torch.tensor([8.0, 8.0]))
    assert float(both) == pytest.approx(float(brake_loss(coast, stop, speed)) / 2, 1e-5)


def test_planner_loss_adds_the_brake_loss_by_its_weight():
    torch.manual_seed(0)
    model = build_untrained("demo").eval()  # no dropout: both calls see the same plan
    stopping = torch.tensor([[0.5 * (i + 1), 0.0] for i in range(4)])  # 2.5 m/s from 5 m/s
    batch = replace(_drive_batch(steps=1), waypoints=stopping.expand(2, 1, 4, 2).clone())
    plain = planner_loss(model, batch)
    weighted = planner_loss(model, batch, brake_weight=2.0)
    assert "plan_brake" not in plain.terms
    assert weighted.terms["plan_brake"] > 0.0  # the untrained plan holds its speed
    assert float(weighted.loss - plain.loss) == pytest.approx(2.0 * weighted.terms["plan_brake"])


def test_planner_loss_trains_the_planner_alone():
    torch.manual_seed(0)
    model = build_untrained("tiny").train()
    set_stage(model, 3)
    out = planner_loss(model, _drive_batch(steps=1))
    assert set(out.terms) == {"plan_waypoints", "plan_heading", "plan_completion", "total"}
    out.loss.backward()
    assert float(model.llm.action_head[0].weight.grad.abs().sum()) > 0
    assert model.llm.world_queries.grad is None  # no world queries, no generation
    assert all(p.grad is None for p in model.generator.parameters())


def test_losses_reject_malformed_batches():
    model = build_untrained("tiny")
    batch = _drive_batch(steps=1)
    batch.future_frames = batch.future_frames[:, :0]
    with pytest.raises(BadInputError, match="S>=1"):
        multistep_loss(model, batch)
    batch = _drive_batch(steps=1)
    batch.future_frames = batch.future_frames[:, :, :, :4]
    with pytest.raises(BadInputError, match="future_frames"):
        single_step_loss(model, batch)
