"""LMGenDrive: vision encoder -> Q-Former -> Llama -> (actions, multi-view world generator).

Two modes (paper Figure 2):

* **online planning** — :meth:`LMGenDrive.plan`: real frames in, waypoints + instruction-completed
  probability + PID control out; CLIP, the UNet and the VAE are never run.
* **offline generation** — :meth:`LMGenDrive.step` / :meth:`LMGenDrive.rollout`: each step predicts
  the action and ``frames_per_step`` future frames of every view; the generated frames (all of
  them, so the history stays at the 10 Hz training rate) and the predicted action become the next
  step's input. The generated last frame of each view is the next step's appearance context.

A :class:`RolloutState` carries the history as cached per-frame Q-Former/adapter outputs (at most
``llm.history_frames`` frames), so a step costs the same whatever the length of the drive so far.

Training losses (the trainer owns the loop): :meth:`LMGenDrive.autoencoder_loss` (stage 0: the VAE
of presets trained from scratch), :meth:`~LMGenDrive.perception_loss` (stage 1),
:meth:`~LMGenDrive.single_step_loss` (stage 2), :meth:`~LMGenDrive.multistep_loss` (stage 3);
:meth:`~LMGenDrive.set_stage` sets which parameters train.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNetMotionModel
from torch import nn
from transformers import CLIPVisionModel, LlamaModel, PreTrainedTokenizerBase

from driving.control import WAYPOINT_DT, WaypointController
from lmgendrive.config import ModelConfig, SamplerConfig, validate_sampler
from lmgendrive.ego_warp import poses_from_waypoints
from lmgendrive.frames import to_pixels, to_uint8
from lmgendrive.llm import LLMOutput, PlannerLLM
from lmgendrive.qformer import FrameCompressor
from lmgendrive.tokenizer import encode_instructions
from lmgendrive.vision import PerceptionBatch, VisionEncoder, perception_loss
from lmgendrive.world import WorldConditioner, WorldGenerator
from schemas.errors import BadInputError, ConfigError

log = logging.getLogger(__name__)

ENCODE_CHUNK = 64  # frames per vision-encoder call when encoding history
COMPLETION_WEIGHT = 0.2  # LMDrive's weight of the instruction-completed loss
HEADING_WEIGHT = 1.0  # planner batches: waypoint-segment heading loss (radians), see heading_loss()
KL_WEIGHT = 1e-6  # autoencoder KL weight (Stable Diffusion's)


@dataclass
class PretrainedComponents:
    """Pretrained modules replacing freshly initialised ones (``paper`` preset)."""

    llm: LlamaModel | None = None
    unet: UNetMotionModel | None = None
    vae: AutoencoderKL | None = None
    clip: CLIPVisionModel | None = None


@dataclass
class ModelIdentity:
    """What generated a sample: model id and the sha256 of ``model.safetensors`` (or of the weights)."""

    model_id: str
    sha256: str


@dataclass
class RolloutState:
    """Everything one batch of drives carries from step to step.

    history: (B, T, Q, llm_hidden) cached per-frame Q-Former/adapter outputs, oldest first,
    T <= llm.history_frames. last_pixels: (B, V, 3, H, W) in [-1, 1], the generator's context.
    speed: (B,) m/s. waypoints: (B, K, 2) the current action (last predicted waypoints, ego frame).
    """

    instruction_ids: torch.Tensor
    instruction_mask: torch.Tensor
    history: torch.Tensor
    last_pixels: torch.Tensor
    speed: torch.Tensor
    waypoints: torch.Tensor
    controllers: list[WaypointController]
    generators: list[torch.Generator]
    steps: int = 0

    @property
    def batch_size(self) -> int:
        return self.history.shape[0]


@dataclass
class PlanResult:
    """waypoints (B, K, 2) ego frame; completion (B,) probability; controls (B, 3) throttle/brake/steer."""

    waypoints: np.ndarray
    completion: np.ndarray
    controls: np.ndarray


@dataclass
class StepResult:
    """One generation step: frames uint8 (B, V, F, H, W, 3) and the :class:`PlanResult` fields."""

    frames: np.ndarray
    waypoints: np.ndarray
    completion: np.ndarray
    controls: np.ndarray


@dataclass
class RolloutResult:
    """frames uint8 (B, V, horizon, H, W, 3); per step: waypoints (B, S, K, 2), completion (B, S), controls (B, S, 3)."""

    frames: np.ndarray
    waypoints: np.ndarray
    completion: np.ndarray
    controls: np.ndarray


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
    (the encoder is frozen in stages 2-3); :meth:`LMGenDrive.planner_loss` reads them instead of
    ``frames``, which may then be ``None``, as may ``future_frames`` (planning needs no future).
    """

    frames: torch.Tensor | None
    instructions: list[str]
    speed: torch.Tensor
    prev_waypoints: torch.Tensor
    waypoints: torch.Tensor
    completed: torch.Tensor
    future_frames: torch.Tensor | None
    tokens: torch.Tensor | None = None

    def to(self, device: torch.device) -> DriveBatch:
        move = {k: None if getattr(self, k) is None else getattr(self, k).to(device)
                for k in ("frames", "speed", "prev_waypoints", "waypoints", "completed", "future_frames", "tokens")}
        return DriveBatch(instructions=self.instructions, **move)


@dataclass
class LossOutput:
    """The scalar to backpropagate and its terms as floats, for logging."""

    loss: torch.Tensor
    terms: dict[str, float]


class LMGenDrive(nn.Module):
    """The unified planning + multi-view video generation network."""

    def __init__(
        self,
        config: ModelConfig,
        tokenizer: PreTrainedTokenizerBase | None = None,
        components: PretrainedComponents | None = None,
    ):
        super().__init__()
        config.validate()
        parts = components or PretrainedComponents()
        self.config = config
        self.tokenizer = tokenizer
        if tokenizer is not None and len(tokenizer) > config.llm.vocab_size:
            raise ConfigError(f"tokenizer has {len(tokenizer)} tokens but llm.vocab_size is {config.llm.vocab_size}")
        self.vision = VisionEncoder(config.vision, len(config.views))
        self.compressor = FrameCompressor(config.qformer, config.vision.dim, config.llm.hidden)
        self.llm = PlannerLLM(config.llm, config.vision.num_waypoints, backbone=parts.llm)
        self.conditioner = WorldConditioner(config, config.llm.hidden, clip=parts.clip)
        self.generator = WorldGenerator(config, unet=parts.unet, vae=parts.vae)
        self.identity: ModelIdentity | None = None

    @property
    def device(self) -> torch.device:
        return self.llm.action_queries.device

    # ----------------------------------------------------------------- shared pieces

    def tokenize(self, instructions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Instruction ids and mask (B, L) on the model's device."""
        if self.tokenizer is None:
            raise ConfigError("this model has no tokenizer; load it with load_checkpoint() or pass one")
        if isinstance(instructions, str) or not all(isinstance(s, str) for s in instructions):
            raise BadInputError("instructions must be a list of strings, one per sample")
        return encode_instructions(self.tokenizer, instructions, self.config.llm.max_instruction_tokens, self.device)

    def encode_history(self, pixels: torch.Tensor) -> torch.Tensor:
        """Per-frame LLM tokens (B, T, Q, llm_hidden) of ``pixels`` (B, T, V, 3, H, W)."""
        return self.compress_history(self.vision_tokens(pixels))

    def vision_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """The vision encoder's per-frame Q-Former input (B, T, N, D) of ``pixels`` (B, T, V, 3, H, W)."""
        b, t = pixels.shape[:2]
        dtype = self.vision.proj.weight.dtype
        chunks = [self.vision(chunk.to(dtype)).for_qformer(self.config.vision.bev_pool)
                  for chunk in pixels.flatten(0, 1).split(ENCODE_CHUNK)]
        return torch.cat(chunks).unflatten(0, (b, t))

    def compress_history(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-frame LLM tokens (B, T, Q, llm_hidden) of :meth:`vision_tokens` output (B, T, N, D)."""
        chunks = [self.compressor(chunk) for chunk in tokens.flatten(0, 1).split(ENCODE_CHUNK)]
        return torch.cat(chunks).unflatten(0, tokens.shape[:2])

    def _pixels(self, frames: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
        return to_pixels(frames, self.config.image_size, self.device, name)

    def _check_views(self, pixels: torch.Tensor, name: str) -> None:
        if pixels.shape[1] != len(self.config.views):
            raise BadInputError(f"{name} has {pixels.shape[1]} views, the model expects {len(self.config.views)} "
                                f"({', '.join(self.config.views)})")

    def _think(self, state: RolloutState, with_world: bool) -> LLMOutput:
        embeds = self.llm.embed_instructions(state.instruction_ids)
        return self.llm(embeds, state.instruction_mask, state.history, state.speed, state.waypoints, with_world)

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    # ----------------------------------------------------------------- inference

    def start(
        self,
        seed_frames: np.ndarray | torch.Tensor,
        instructions: Sequence[str],
        seeds: Sequence[int] | None = None,
        speed: np.ndarray | torch.Tensor | Sequence[float] | None = None,
        driven: np.ndarray | torch.Tensor | None = None,
    ) -> RolloutState:
        """A state from seed frames uint8 (B, V, T, H, W, 3) (any size; resized), B instructions,
        B seeds (default 0 each), the current speed (B,) in m/s (default 0) and, when known, the
        path ``driven`` (B, K, 2) over the last step (see :meth:`plan`; default: unknown, zeros)."""
        pixels = self._pixels(seed_frames, "seed_frames")
        if pixels.ndim != 6:
            raise BadInputError(f"seed_frames must be (B, V, T, H, W, 3), got {tuple(torch.as_tensor(seed_frames).shape)}")
        self._check_views(pixels, "seed_frames")
        b = pixels.shape[0]
        if len(instructions) != b:
            raise BadInputError(f"{len(instructions)} instructions for {b} samples")
        seeds = [0] * b if seeds is None else list(seeds)
        if len(seeds) != b:
            raise BadInputError(f"{len(seeds)} seeds for {b} samples")
        ids, mask = self.tokenize(instructions)
        with self._inference():
            history = self.encode_history(pixels[:, :, -self.config.llm.history_frames:].transpose(1, 2))
        return RolloutState(
            instruction_ids=ids,
            instruction_mask=mask,
            history=history,
            last_pixels=pixels[:, :, -1],
            speed=self._speed(speed, b),
            waypoints=self._driven(driven, b) if driven is not None
            else torch.zeros(b, self.config.vision.num_waypoints, 2, device=self.device),
            controllers=[WaypointController() for _ in range(b)],
            generators=[torch.Generator().manual_seed(int(s)) for s in seeds],
        )

    def _speed(self, speed: np.ndarray | torch.Tensor | Sequence[float] | None, b: int) -> torch.Tensor:
        if speed is None:
            return torch.zeros(b, device=self.device)
        s = torch.as_tensor(speed, dtype=torch.float32)
        if s.shape != (b,):
            raise BadInputError(f"speed must have shape ({b},), got {tuple(s.shape)}")
        return s.to(self.device)

    def _driven(self, driven: np.ndarray | torch.Tensor, b: int) -> torch.Tensor:
        d = torch.as_tensor(driven, dtype=torch.float32)
        k = self.config.vision.num_waypoints
        if d.shape != (b, k, 2):
            raise BadInputError(f"driven must have shape ({b}, {k}, 2): the ego's positions at the {k} waypoint "
                                f"times of the last step, in that step's ego frame; got {tuple(d.shape)}")
        if not torch.isfinite(d).all():
            raise BadInputError("driven has non-finite values")
        return d.to(self.device)

    def _observe(self, state: RolloutState, pixels: torch.Tensor) -> None:
        """Append ``pixels`` (B, V, T, 3, H, W) to the history and make the last frame the context."""
        tokens = self.encode_history(pixels.transpose(1, 2))
        state.history = torch.cat([state.history, tokens], dim=1)[:, -self.config.llm.history_frames:]
        state.last_pixels = pixels[:, :, -1]

    def _act(self, state: RolloutState, out: LLMOutput) -> PlanResult:
        waypoints = out.waypoints.cpu().numpy().astype(np.float32)
        speed = state.speed.cpu().numpy()
        steps = [ctrl.step(wp, float(v)) for ctrl, wp, v in zip(state.controllers, waypoints, speed, strict=True)]
        controls = np.array([[c.throttle, c.brake, c.steer] for c in steps], dtype=np.float32)
        state.waypoints = out.waypoints.to(state.waypoints.dtype)
        return PlanResult(waypoints=waypoints, completion=torch.sigmoid(out.completion_logit).cpu().numpy(),
                          controls=controls)

    def observe(
        self,
        state: RolloutState,
        frames: np.ndarray | torch.Tensor | None = None,
        speed: np.ndarray | torch.Tensor | Sequence[float] | None = None,
        driven: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Feed measurements into ``state`` without acting: new real ``frames`` uint8 (B, V, H, W, 3)
        or (B, V, T, H, W, 3), the measured ``speed`` (B,) and the path ``driven`` (B, K, 2) since the
        last plan.

        ``driven`` is odometry: where the ego was at the K waypoint times (0.2 .. 0.8 s) after the
        last step began, in the ego frame at that moment; exactly what the previous action means in
        training (the expert's waypoints one step earlier). Without it the model takes its own last
        plan for the path driven, as in generation; a real car seldom drove exactly that, and the
        planner reads the car's acceleration from this path."""
        with self._inference():
            if frames is not None:
                pixels = self._pixels(frames, "frames")
                if pixels.ndim not in (5, 6):
                    raise BadInputError(f"frames must be (B, V, H, W, 3) or (B, V, T, H, W, 3), "
                                        f"got {tuple(torch.as_tensor(frames).shape)}")
                pixels = pixels[:, :, None] if pixels.ndim == 5 else pixels
                self._check_views(pixels, "frames")
                self._observe(state, pixels)
            if speed is not None:
                state.speed = self._speed(speed, state.batch_size)
            if driven is not None:
                state.waypoints = self._driven(driven, state.batch_size)

    def plan(
        self,
        state: RolloutState,
        frames: np.ndarray | torch.Tensor | None = None,
        speed: np.ndarray | torch.Tensor | Sequence[float] | None = None,
        driven: np.ndarray | torch.Tensor | None = None,
    ) -> PlanResult:
        """Online planning: :meth:`observe` what is given, then predict the action (which becomes
        the path driven unless the next call says otherwise). Never runs the world generator
        (CLIP, UNet, VAE)."""
        self.observe(state, frames, speed, driven)
        with self._inference():
            return self._act(state, self._think(state, with_world=False))

    def step(self, state: RolloutState, sampler: SamplerConfig | None = None) -> StepResult:
        """Offline generation step: the action and ``frames_per_step`` future frames of every view;
        both are fed back into ``state``."""
        sampler = sampler or self.config.sampler
        validate_sampler(sampler)
        with self._inference():
            out = self._think(state, with_world=True)
            plan = self._act(state, out)
            cond = self.conditioner(state.last_pixels, out.world)
            frames = self.generator.sample(cond, self.conditioner.null_cond, state.last_pixels, state.generators,
                                           sampler, ego_poses=self._poses(out.waypoints))
            self._observe(state, frames)
            state.speed = _speed_after(out.waypoints)
            state.steps += 1
        return StepResult(frames=to_uint8(frames), waypoints=plan.waypoints, completion=plan.completion,
                          controls=plan.controls)

    def _poses(self, waypoints: torch.Tensor) -> torch.Tensor:
        """The planned ego pose (B, F, 3) at each frame of the step ``waypoints`` (B, K, 2) plan."""
        times = [WAYPOINT_DT * (k + 1) for k in range(waypoints.shape[1])]
        return poses_from_waypoints(waypoints, self.config.frames_per_step, self.config.fps, times)

    def rollout(
        self,
        seed_frames: np.ndarray | torch.Tensor,
        instructions: Sequence[str],
        horizon: int,
        seeds: Sequence[int],
        speed: np.ndarray | torch.Tensor | Sequence[float] | None = None,
        driven: np.ndarray | torch.Tensor | None = None,
        sampler: SamplerConfig | None = None,
        on_step: Callable[[int, StepResult], None] | None = None,
    ) -> RolloutResult:
        """Autoregressive generation of ``horizon`` frames (a multiple of ``frames_per_step``) per view,
        from seed frames, the speed and (when known) the path driven over the last step at the last
        seed frame (:meth:`start`).

        Deterministic given ``seeds``: sample i draws its noise only from ``seeds[i]``, so its result
        does not depend on its batch mates. ``on_step(step_index, result)`` is called after each step.
        """
        f = self.config.frames_per_step
        if horizon <= 0 or horizon % f:
            raise BadInputError(f"horizon must be a positive multiple of {f}, got {horizon}")
        state = self.start(seed_frames, instructions, seeds, speed, driven)
        results = []
        for i in range(horizon // f):
            result = self.step(state, sampler)
            results.append(result)
            if on_step is not None:
                on_step(i, result)
        return RolloutResult(
            frames=np.concatenate([r.frames for r in results], axis=2),
            waypoints=np.stack([r.waypoints for r in results], axis=1),
            completion=np.stack([r.completion for r in results], axis=1).astype(np.float32),
            controls=np.stack([r.controls for r in results], axis=1),
        )

    # ----------------------------------------------------------------- training

    def set_stage(self, stage: int) -> list[nn.Parameter]:
        """Set ``requires_grad`` for a training stage and return the trainable parameters.

        0: the VAE alone (presets trained from scratch). 1: the vision encoder and its heads.
        2: vision encoder frozen; Q-Former, adapter, LLM, queries, action head, fusion, UNet (and
        CLIP unless it is pretrained) train. 3: as 2 but the whole world generator (CLIP, fusion,
        UNet, VAE) is frozen; gradients still flow through it to the LLM side.
        """
        if stage not in (0, 1, 2, 3):
            raise ConfigError(f"training stage must be 0, 1, 2 or 3, got {stage}")
        self.requires_grad_(False)
        if stage == 0:
            self.generator.vae.requires_grad_(True)
        elif stage == 1:
            self.vision.frozen = False
            self.vision.requires_grad_(True)
        else:
            self.vision.freeze()
            self.compressor.requires_grad_(True)
            self.llm.requires_grad_(True)
            if stage == 2:
                self.conditioner.requires_grad_(True)
                self.conditioner.clip.requires_grad_(self.config.pretrained.clip is None)
                # the conditioner reads CLIP's patch tokens, never its pooled output: a parameter
                # that gets no gradient would stall data-parallel training (DDP's reducer)
                for name, module in self.conditioner.clip.named_modules():
                    if name.endswith("post_layernorm"):
                        module.requires_grad_(False)
                self.generator.unet.requires_grad_(True)
        return [p for p in self.parameters() if p.requires_grad]

    def autoencoder_loss(self, frames: torch.Tensor) -> LossOutput:
        """Stage 0: VAE reconstruction L1 + KL on uint8 frames (..., H, W, 3)."""
        x = self._pixels(frames, "frames").reshape(-1, 3, *self.config.image_size)
        dist = self.generator.vae.encode(x.to(self.generator.vae.dtype)).latent_dist
        rec = self.generator.vae.decode(dist.sample()).sample.float()
        l1 = F.l1_loss(rec, x)
        kl = dist.kl().mean()
        loss = l1 + KL_WEIGHT * kl
        return LossOutput(loss, {"l1": l1.item(), "kl": kl.item(), "total": loss.item()})

    def perception_loss(self, batch: PerceptionBatch) -> LossOutput:
        """Stage 1: detection + waypoint + traffic-light loss (see :func:`lmgendrive.vision.perception_loss`)."""
        pixels = self._pixels(batch.frames, "frames")
        self._check_views(pixels, "frames")
        out = self.vision.perceive(self.vision(pixels.to(self.vision.proj.weight.dtype)))
        loss, terms = perception_loss(out, batch)
        return LossOutput(loss, terms)

    def _step_loss(self, out: LLMOutput, context: torch.Tensor, batch: DriveBatch, k: int,
                   future: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        wp = F.l1_loss(out.waypoints, batch.waypoints[:, k].float())
        done = F.binary_cross_entropy_with_logits(out.completion_logit, batch.completed[:, k].float())
        cond = self.conditioner(context, out.world)
        diff = self.generator.diffusion_loss(future, cond, context, self.conditioner.null_cond)
        total = wp + COMPLETION_WEIGHT * done + diff
        return total, {"waypoints": wp, "completion": done, "diffusion": diff}

    def _prepare(self, batch: DriveBatch, min_steps: int) -> tuple[torch.Tensor, ...]:
        """Pixels, future pixels, instruction embeddings and mask, encoded history of ``batch``."""
        pixels = self._pixels(batch.frames, "frames")
        if pixels.ndim != 6:
            raise BadInputError(f"frames must be (B, V, T, H, W, 3), got {tuple(batch.frames.shape)}")
        self._check_views(pixels, "frames")
        future = self._pixels(batch.future_frames, "future_frames")
        if future.ndim != 7 or future.shape[1] < min_steps or future.shape[3] != self.config.frames_per_step:
            raise BadInputError(f"future_frames must be (B, S>={min_steps}, V, {self.config.frames_per_step}, H, W, 3),"
                                f" got {tuple(batch.future_frames.shape)}")
        ids, mask = self.tokenize(batch.instructions)
        history = self.encode_history(pixels[:, :, -self.config.llm.history_frames:].transpose(1, 2))
        return pixels, future, self.llm.embed_instructions(ids), mask, history

    def single_step_loss(self, batch: DriveBatch) -> LossOutput:
        """Stage 2: waypoint L1 + 0.2 completion BCE + diffusion MSE for the first step of ``batch``."""
        pixels, future, embeds, mask, history = self._prepare(batch, 1)
        out = self.llm(embeds, mask, history, batch.speed.float(), batch.prev_waypoints.float())
        total, terms = self._step_loss(out, pixels[:, :, -1], batch, 0, future[:, 0])
        return LossOutput(total, {**{k: v.item() for k, v in terms.items()}, "total": total.item()})

    def planner_loss(self, batch: DriveBatch) -> LossOutput:
        """Planning alone (no world queries, no generation) for the first step of ``batch``:
        waypoint L1 + heading loss + 0.2 completion BCE. Stages 2-3 add it on their planner batches.
        Reads ``batch.tokens`` when given, else encodes ``batch.frames``."""
        if batch.tokens is not None:
            tokens = batch.tokens[:, -self.config.llm.history_frames:].to(self.vision.proj.weight.dtype)
        else:
            pixels = self._pixels(batch.frames, "frames")
            if pixels.ndim != 6:
                raise BadInputError(f"frames must be (B, V, T, H, W, 3), got {tuple(batch.frames.shape)}")
            self._check_views(pixels, "frames")
            tokens = self.vision_tokens(pixels[:, :, -self.config.llm.history_frames:].transpose(1, 2))
        ids, mask = self.tokenize(batch.instructions)
        history = self.compress_history(tokens)
        out = self.llm(self.llm.embed_instructions(ids), mask, history, batch.speed.float(),
                       batch.prev_waypoints.float(), with_world=False)
        target = batch.waypoints[:, 0].float()
        wp = F.l1_loss(out.waypoints, target)
        heading = heading_loss(out.waypoints, target)
        done = F.binary_cross_entropy_with_logits(out.completion_logit, batch.completed[:, 0].float())
        total = wp + HEADING_WEIGHT * heading + COMPLETION_WEIGHT * done
        return LossOutput(total, {"plan_waypoints": wp.item(), "plan_heading": heading.item(),
                                  "plan_completion": done.item(), "total": total.item()})

    def multistep_loss(self, batch: DriveBatch, sampler: SamplerConfig | None = None) -> LossOutput:
        """Stage 3: the single-step loss over S >= 2 steps, each step's generated video fed back.

        Between steps the generator samples the future frames with ``sampler`` (default the
        config's; fewer steps make training cheaper) and noise from the global torch RNG; its last
        ``diffusion.grad_steps`` denoising steps keep their graph, so gradients from later steps
        reach the LLM and adapters through the generated frames, the frozen vision encoder and the
        generator. The predicted waypoints become the next step's action.
        """
        sampler = sampler or self.config.sampler
        validate_sampler(sampler)
        pixels, future, embeds, mask, history = self._prepare(batch, 2)
        steps = future.shape[1]
        speed, action, context = batch.speed.float(), batch.prev_waypoints.float(), pixels[:, :, -1]
        totals, sums = [], {}
        for k in range(steps):
            out = self.llm(embeds, mask, history, speed, action)
            total, terms = self._step_loss(out, context, batch, k, future[:, k])
            totals.append(total)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.item() / steps
            if k + 1 < steps:
                generators = [torch.Generator().manual_seed(int(torch.randint(2**62, ()))) for _ in batch.instructions]
                cond = self.conditioner(context, out.world)
                video = self.generator.sample(cond, self.conditioner.null_cond, context, generators, sampler,
                                              grad_steps=self.config.diffusion.grad_steps,
                                              ego_poses=self._poses(out.waypoints.detach()))
                history = torch.cat([history, self.encode_history(video.transpose(1, 2))], dim=1)
                history = history[:, -self.config.llm.history_frames:]
                context, action, speed = video[:, :, -1], out.waypoints, _speed_after(out.waypoints)
        loss = torch.stack(totals).mean()
        return LossOutput(loss, {**sums, "total": loss.item()})

    # ----------------------------------------------------------------- introspection

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component (works on the meta device)."""

        def count(module: nn.Module) -> int:
            return sum(p.numel() for p in module.parameters())

        unet = self.generator.unet
        return {
            "vision": count(self.vision),
            "qformer": count(self.compressor),
            "llm": count(self.llm.model),
            "llm_heads": count(self.llm) - count(self.llm.model),
            "clip": count(self.conditioner.clip),
            "fusion": count(self.conditioner) - count(self.conditioner.clip),
            "unet": count(unet),
            "motion_modules": sum(p.numel() for n, p in unet.named_parameters() if "motion_modules" in n),
            "vae": count(self.generator.vae),
            "total": count(self),
        }


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
    ahead = torch.tensor([1.0, 0.0], device=p.device, dtype=p.dtype)  # stands in for zero-length segments:
    p = torch.where(p.norm(dim=-1, keepdim=True) > 1e-6, p, ahead)  # atan2(0, 0) has a NaN gradient
    t = torch.where(valid[..., None], t, ahead)
    cross, dot = p[..., 0] * t[..., 1] - p[..., 1] * t[..., 0], (p * t).sum(-1)
    error = torch.atan2(cross, dot).abs()  # the angle between the segments, in [0, pi]
    return (error * valid).sum() / valid.sum().clamp_min(1.0)


def _speed_after(waypoints: torch.Tensor) -> torch.Tensor:
    """Speed (B,) at the last waypoint, from the last waypoint gap: the next step starts there."""
    return (waypoints[:, -1] - waypoints[:, -2]).norm(dim=-1).float() / WAYPOINT_DT
