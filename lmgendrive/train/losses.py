"""The training losses of :class:`~lmgendrive.model.LMGenDrive`, one per stage (the trainer owns the
loop; :func:`lmgendrive.train.stages.set_stage` sets which parameters train).

:func:`autoencoder_loss` (stage 0: the VAE of presets trained from scratch),
:func:`single_step_loss` (stage 2), :func:`multistep_loss` (stage 3) and :func:`planner_loss` (the
planner batches of stages 2-3); :func:`diffusion_loss` and :func:`heading_loss` are their parts.
Stage 1's loss is :func:`lmgendrive.train.perception.perception_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from driving.control import WAYPOINT_DT, WaypointController
from lmgendrive.llm import LLMOutput
from lmgendrive.model import LMGenDrive, speed_after
from lmgendrive.sampling import sample_frames
from lmgendrive.world import WorldGenerator
from schemas.errors import BadInputError, ConfigError
from schemas.sampler import SamplerConfig

COMPLETION_WEIGHT = 0.2  # LMDrive's weight of the instruction-completed loss
BRAKE_MARGIN = 0.03  # brake_loss(): how far past the brake threshold a plan must be, in speed ratio
MOVING = 1.0  # m/s: brake_loss() weighs cars at least this fast
HEADING_WEIGHT = 1.0  # planner batches: waypoint-segment heading loss (radians), see heading_loss()
KL_WEIGHT = 1e-6  # autoencoder KL weight (Stable Diffusion's)


@dataclass
class DriveBatch:
    """A stage-2/3 batch of S consecutive generation steps (S = 1 for the single-step loss).

    frames: uint8 (B, V, T, H, W, 3) context frames at 10 Hz, the last one is the current frame.
    instructions: B strings.
    speed: float (B,) current speed, m/s.
    prev_waypoints: float (B, K, 2) the current action: the waypoints of the previous step (0.8 s
    earlier, in that step's ego frame); zeros when unknown.
    waypoints: float (B, S, K, 2) target waypoints of each step (ego frame of that step).
    completed: float (B, S) 1 where the instruction is completed at that step.
    future_frames: uint8 (B, S, V, F, H, W, 3) the F frames that follow each step.
    tokens: float (B, T, N, D) the context frames' :meth:`LMGenDrive.vision_tokens`, precomputed
    (the encoder is frozen in stages 2-3); :func:`planner_loss` reads them instead of ``frames``,
    which may then be ``None``, as may ``future_frames`` (planning needs no future).
    readers: float (B, 7) with ``tokens``, for a model whose action head reads the readers: their
    :meth:`LMGenDrive.planner_readers` at the current frame, precomputed with the tokens.
    """

    frames: torch.Tensor | None
    instructions: list[str]
    speed: torch.Tensor
    prev_waypoints: torch.Tensor
    waypoints: torch.Tensor
    completed: torch.Tensor
    future_frames: torch.Tensor | None
    tokens: torch.Tensor | None = None
    readers: torch.Tensor | None = None

    def to(self, device: torch.device) -> DriveBatch:
        names = (
            "frames",
            "speed",
            "prev_waypoints",
            "waypoints",
            "completed",
            "future_frames",
            "tokens",
            "readers",
        )
        move = {k: None if getattr(self, k) is None else getattr(self, k).to(device) for k in names}
        return DriveBatch(instructions=self.instructions, **move)


@dataclass
class LossOutput:
    """The scalar to backpropagate and its terms as floats, for logging."""

    loss: torch.Tensor
    terms: dict[str, float]


def autoencoder_loss(model: LMGenDrive, frames: torch.Tensor) -> LossOutput:
    """Stage 0: VAE reconstruction L1 + KL on uint8 frames (..., H, W, 3)."""
    x = model.pixels(frames, "frames").reshape(-1, 3, *model.config.image_size)
    dist = model.generator.vae.encode(x.to(model.generator.vae.dtype)).latent_dist
    rec = model.generator.vae.decode(dist.sample()).sample.float()
    l1 = F.l1_loss(rec, x)
    kl = dist.kl().mean()
    loss = l1 + KL_WEIGHT * kl
    return LossOutput(loss, {"l1": l1.item(), "kl": kl.item(), "total": loss.item()})


def diffusion_loss(
    generator: WorldGenerator,
    target: torch.Tensor,
    cond: torch.Tensor,
    last_pixels: torch.Tensor,
    null_cond: torch.Tensor,
    context_noise: float = 0.0,
    ego_poses: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDPM epsilon MSE on the future frames ``target`` (B, V, F, 3, H, W) in [-1, 1].

    ``cond`` (B, V, S, dim) is replaced by ``null_cond`` (S, dim) for a ``cond_dropout`` share of
    samples while the generator trains (classifier-free guidance); ``last_pixels`` (B, V, 3, H, W)
    are the context frames. With ``context_noise`` > 0 (not in the paper; GameNGen's noise
    augmentation) each sample's context latent is noised to a level drawn uniformly from
    ``[0, context_noise]`` of the schedule, so the generator learns to read through a degraded
    context instead of copying it (``sampler.context_noise`` sets the level at inference).
    ``ego_poses`` (B, F, 3): the ego pose of each target frame, which ``diffusion.moved_context``
    moves the context to (the expert's path: the target frames follow it).
    """
    b, v, f = target.shape[:3]
    with torch.no_grad():
        z0 = generator.encode(target.flatten(0, 2), sample=True)
    z0 = z0.unflatten(0, (b * v, f)).transpose(1, 2)  # (B*V, c, F, h, w)
    noise = torch.randn_like(z0)
    schedule = generator.train_scheduler
    t = torch.randint(0, schedule.config.num_train_timesteps, (b,), device=z0.device)
    t = t.repeat_interleave(v)
    noisy = schedule.add_noise(z0, noise, t)
    dropout = generator.config.diffusion.cond_dropout
    if generator.training and dropout > 0:
        drop = torch.rand(b, device=cond.device) < dropout
        cond = torch.where(drop[:, None, None, None], null_cond.to(cond.dtype), cond)
    context = generator.context_latents(last_pixels, ego_poses)
    if context is not None and context_noise > 0:
        level = (torch.rand(b, device=context.device) * context_noise).repeat_interleave(v)
        context = generator.noised_context(context, level, torch.randn_like(context))
    eps = generator.predict_noise(noisy, t, cond, context)
    return F.mse_loss(eps.float(), noise.float())


def _step_loss(
    model: LMGenDrive,
    out: LLMOutput,
    context: torch.Tensor,
    batch: DriveBatch,
    k: int,
    future: torch.Tensor,
    context_noise: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Waypoint L1 + 0.2 completion BCE + diffusion MSE of step ``k``."""
    wp = F.l1_loss(out.waypoints, batch.waypoints[:, k].float())
    done = F.binary_cross_entropy_with_logits(out.completion_logit, batch.completed[:, k].float())
    cond = model.conditioner(context, out.world)
    diff = diffusion_loss(
        model.generator,
        future,
        cond,
        context,
        model.conditioner.null_cond,
        context_noise,
        model.planned_poses(batch.waypoints[:, k].float()),
    )
    total = wp + COMPLETION_WEIGHT * done + diff
    return total, {"waypoints": wp, "completion": done, "diffusion": diff}


def _prepare(model: LMGenDrive, batch: DriveBatch, min_steps: int) -> tuple[torch.Tensor, ...]:
    """Pixels, future pixels, instruction embeddings and mask, encoded history of ``batch`` and
    what the action head's reader branch reads at its current frame (None without one)."""
    pixels = model.pixels(batch.frames, "frames")
    if pixels.ndim != 6:
        raise BadInputError(f"frames must be (B, V, T, H, W, 3), got {tuple(batch.frames.shape)}")
    model.check_views(pixels, "frames")
    future = model.pixels(batch.future_frames, "future_frames")
    f = model.config.frames_per_step
    if future.ndim != 7 or future.shape[1] < min_steps or future.shape[3] != f:
        raise BadInputError(
            f"future_frames must be (B, S>={min_steps}, V, {f}, H, W, 3),"
            f" got {tuple(batch.future_frames.shape)}"
        )
    ids, mask = model.tokenize(batch.instructions)
    history, readers = model.encode_for_planner(
        pixels[:, :, -model.config.llm.history_frames :].transpose(1, 2)
    )
    return pixels, future, model.llm.embed_instructions(ids), mask, history, readers


def single_step_loss(
    model: LMGenDrive, batch: DriveBatch, context_noise: float = 0.0
) -> LossOutput:
    """Stage 2: waypoint L1 + 0.2 completion BCE + diffusion MSE for the first step of ``batch``
    (``context_noise``: see :func:`diffusion_loss`)."""
    pixels, future, embeds, mask, history, readers = _prepare(model, batch, 1)
    out = model.llm(
        embeds, mask, history, batch.speed.float(), batch.prev_waypoints.float(), True, readers
    )
    last = model.camera_views(pixels)[:, :, -1]
    total, terms = _step_loss(model, out, last, batch, 0, future[:, 0], context_noise)
    return LossOutput(total, {**{k: v.item() for k, v in terms.items()}, "total": total.item()})


def planner_loss(model: LMGenDrive, batch: DriveBatch, brake_weight: float = 0.0) -> LossOutput:
    """Planning alone (no world queries, no generation) for the first step of ``batch``:
    waypoint L1 + heading loss + 0.2 completion BCE, and ``brake_weight`` x :func:`brake_loss`
    when it is above 0. Stages 2-3 add it on their planner batches. Reads ``batch.tokens`` when
    given, else encodes ``batch.frames``."""
    history_frames = model.config.llm.history_frames
    if batch.tokens is not None:
        tokens = batch.tokens[:, -history_frames:].to(model.vision.proj.weight.dtype)
        readers = batch.readers
        if (readers is None) != (model.llm.reader_branch is None):
            raise ConfigError(
                "cached planner tokens come with the readers' values exactly when the action "
                "head reads them (llm.action_reads_readers)"
            )
        history = model.compress_history(tokens)
    else:
        pixels = model.pixels(batch.frames, "frames")
        if pixels.ndim != 6:
            raise BadInputError(
                f"frames must be (B, V, T, H, W, 3), got {tuple(batch.frames.shape)}"
            )
        model.check_views(pixels, "frames")
        history, readers = model.encode_for_planner(pixels[:, :, -history_frames:].transpose(1, 2))
    ids, mask = model.tokenize(batch.instructions)
    out = model.llm(
        model.llm.embed_instructions(ids),
        mask,
        history,
        batch.speed.float(),
        batch.prev_waypoints.float(),
        with_world=False,
        readers=readers,
    )
    target = batch.waypoints[:, 0].float()
    wp = F.l1_loss(out.waypoints, target)
    heading = heading_loss(out.waypoints, target)
    done = F.binary_cross_entropy_with_logits(out.completion_logit, batch.completed[:, 0].float())
    total = wp + HEADING_WEIGHT * heading + COMPLETION_WEIGHT * done
    terms = {"plan_waypoints": wp.item(), "plan_heading": heading.item()}
    if brake_weight > 0:
        brake = brake_loss(out.waypoints, target, batch.speed.float())
        total = total + brake_weight * brake
        terms["plan_brake"] = brake.item()
    return LossOutput(total, {**terms, "plan_completion": done.item(), "total": total.item()})


def multistep_loss(
    model: LMGenDrive, batch: DriveBatch, sampler: SamplerConfig | None = None
) -> LossOutput:
    """Stage 3: the single-step loss over S >= 1 steps, each step's generated video fed back.

    Between steps the generator samples the future frames with ``sampler`` (default the model
    config's; fewer steps make training cheaper) and noise from the global torch RNG; its last
    ``diffusion.grad_steps`` denoising steps keep their graph, so gradients from later steps
    reach the LLM and adapters through the generated frames, the frozen vision encoder and the
    generator. The predicted waypoints become the next step's action.
    """
    sampler = sampler or model.config.sampler
    pixels, future, embeds, mask, history, readers = _prepare(model, batch, 1)
    steps = future.shape[1]
    speed, action, context = (
        batch.speed.float(),
        batch.prev_waypoints.float(),
        model.camera_views(pixels)[:, :, -1],
    )
    totals, sums = [], {}
    for k in range(steps):
        out = model.llm(embeds, mask, history, speed, action, True, readers)
        total, terms = _step_loss(model, out, context, batch, k, future[:, k])
        totals.append(total)
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + value.item() / steps
        if k + 1 < steps:
            generators = [
                torch.Generator().manual_seed(int(torch.randint(2**62, ())))
                for _ in batch.instructions
            ]
            cond = model.conditioner(context, out.world)
            video = sample_frames(
                model.generator,
                cond,
                model.conditioner.null_cond,
                context,
                generators,
                sampler,
                grad_steps=model.config.diffusion.grad_steps,
                ego_poses=model.planned_poses(out.waypoints.detach()),
            )
            seen, readers = model.encode_for_planner(video.transpose(1, 2))
            history = torch.cat([history, seen], dim=1)[:, -model.config.llm.history_frames :]
            context, action, speed = video[:, :, -1], out.waypoints, speed_after(out.waypoints)
    loss = torch.stack(totals).mean()
    return LossOutput(loss, {**sums, "total": loss.item()})


def rollout_loss(
    model: LMGenDrive, batch: DriveBatch, sampler: SamplerConfig, context_noise: float = 0.0
) -> LossOutput:
    """Stage 4 (not in the paper; Epona's chain-of-forward, DIAMOND): the world generator trained on
    its own rollouts, the planner frozen.

    Step 0's context is the real last frame; each later step's is the last frame the generator
    itself sampled one step earlier with ``sampler`` (no gradient through the sampling), moved along
    the expert's path (the real future frames follow it), and the expert's action and speed are fed
    to the frozen planner, which only supplies the world features. Every step's diffusion loss is
    against the real future frames: the generator learns to pull its own drift back to real frames.
    """
    pixels, future, embeds, mask, history, readers = _prepare(model, batch, 2)
    speed, action, context = (
        batch.speed.float(),
        batch.prev_waypoints.float(),
        model.camera_views(pixels)[:, :, -1],
    )
    null_cond = model.conditioner.null_cond
    losses = []
    for k in range(future.shape[1]):
        with torch.no_grad():
            world = model.llm(embeds, mask, history, speed, action, True, readers).world
        cond = model.conditioner(context, world)
        expert = batch.waypoints[:, k].float()
        poses = model.planned_poses(expert)
        losses.append(
            diffusion_loss(
                model.generator, future[:, k], cond, context, null_cond, context_noise, poses
            )
        )
        if k + 1 == future.shape[1]:
            break
        generators = [
            torch.Generator().manual_seed(int(torch.randint(2**62, ()))) for _ in batch.instructions
        ]
        with torch.no_grad():
            video = sample_frames(
                model.generator,
                cond,
                null_cond,
                context,
                generators,
                sampler,
                ego_poses=poses,
            )
            seen, readers = model.encode_for_planner(video.transpose(1, 2))
            history = torch.cat([history, seen], dim=1)
        history = history[:, -model.config.llm.history_frames :]
        context, action, speed = video[:, :, -1], expert, speed_after(expert)
    loss = torch.stack(losses).mean()
    fed_back = torch.stack(losses[1:]).mean().item()
    return LossOutput(
        loss,
        {"diffusion_real": losses[0].item(), "diffusion_fed_back": fed_back, "total": loss.item()},
    )


def brake_loss(
    predicted: torch.Tensor, target: torch.Tensor, speed: torch.Tensor, margin: float = BRAKE_MARGIN
) -> torch.Tensor:
    """Mean hinge (over moving cars, above 1 m/s) on the side of LMDrive's brake threshold of
    ``predicted``'s speed ratio: the first waypoint gap's speed (what
    :class:`driving.control.WaypointController` drives at) over the car's ``speed``, against
    ``1 / brake_ratio``. Where ``target`` (B, K, 2) brakes, the prediction pays for each unit above
    the threshold less ``margin``; where it does not, for each unit below the threshold plus
    ``margin``.

    Waypoint L1 alone leaves a full stop at the controller's mercy: from 7.8 m/s the expert's
    next 0.2-0.4 s ask for 0.82 of the speed, the threshold is 0.91, and a plan that regresses to
    0.89 in the mix of windows still brakes; one at 0.93 only coasts through a red light."""

    def ratio(w: torch.Tensor) -> torch.Tensor:
        return (w[:, 1] - w[:, 0]).norm(dim=-1) / WAYPOINT_DT / speed.clamp_min(MOVING)

    threshold = 1.0 / WaypointController.brake_ratio
    brakes = ratio(target) < threshold
    said = ratio(predicted)
    wrong = torch.where(brakes, said - (threshold - margin), threshold + margin - said)
    moving = (speed > MOVING).to(said.dtype)
    return (wrong.clamp_min(0.0) * moving).sum() / moving.sum().clamp_min(1.0)


def heading_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute heading error (radians) of the waypoint segments (ego to the first waypoint,
    then waypoint to waypoint) of ``predicted`` against ``target`` (B, K, 2), over target segments
    longer than 5 cm (a standing car has no heading).

    Waypoint L1 alone weighs the start of a turn little: a last segment 10 degrees off moves the
    waypoints by centimetres, as much as an ordinary speed error; here it costs 0.17 per segment.
    """

    def segments(w: torch.Tensor) -> torch.Tensor:
        return torch.diff(F.pad(w, (0, 0, 1, 0)), dim=1)

    p, t = segments(predicted), segments(target)
    valid = t.norm(dim=-1) > 0.05
    # ahead stands in for zero-length segments: atan2(0, 0) has a NaN gradient
    ahead = torch.tensor([1.0, 0.0], device=p.device, dtype=p.dtype)
    p = torch.where(p.norm(dim=-1, keepdim=True) > 1e-6, p, ahead)
    t = torch.where(valid[..., None], t, ahead)
    cross, dot = p[..., 0] * t[..., 1] - p[..., 1] * t[..., 0], (p * t).sum(-1)
    error = torch.atan2(cross, dot).abs()  # the angle between the segments, in [0, pi]
    return (error * valid).sum() / valid.sum().clamp_min(1.0)
