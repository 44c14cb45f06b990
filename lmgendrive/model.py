"""LMGenDrive: vision encoder -> Q-Former -> Llama -> (actions, multi-view world generator).

Two modes (paper Figure 2):

* **online planning** — :meth:`LMGenDrive.plan`: real frames in, waypoints + instruction-completed
  probability + PID control out; CLIP, the UNet and the VAE are never run.
* **offline generation** — :meth:`LMGenDrive.step` / :meth:`LMGenDrive.rollout`: each step
  predicts the action and ``frames_per_step`` future frames of every view (denoised by
  :func:`lmgendrive.sampling.sample_frames`); the generated frames (all of them, so the history
  stays at the 10 Hz training rate) and the predicted action become the next step's input. The
  generated last frame of each view is the next step's appearance context.

A :class:`~lmgendrive.rollout.RolloutState` carries the history as cached per-frame
Q-Former/adapter outputs (at most ``llm.history_frames`` frames), so a step costs the same whatever
the length of the drive so far. The training losses and stage freezing are in
:mod:`lmgendrive.train.losses` and :mod:`lmgendrive.train.stages`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL, UNetMotionModel
from torch import nn
from transformers import CLIPVisionModel, LlamaModel, PreTrainedTokenizerBase

from driving.control import WAYPOINT_DT, WaypointController
from lmgendrive.config import ModelConfig
from lmgendrive.ego_warp import poses_from_waypoints
from lmgendrive.frames import to_pixels, to_uint8
from lmgendrive.llm import LLMOutput, PlannerLLM, ReaderBranch
from lmgendrive.qformer import FrameCompressor
from lmgendrive.rollout import PlanResult, RolloutResult, RolloutState, StepResult
from lmgendrive.sampling import sample_frames
from lmgendrive.tokenizer import encode_instructions
from lmgendrive.vision import LANE_OUTPUTS, LIGHT_CLASSES, PixelReader, VisionEncoder
from lmgendrive.world import WorldConditioner, WorldGenerator
from schemas.errors import BadInputError, ConfigError
from schemas.sampler import SamplerConfig

ENCODE_CHUNK = 64  # frames per vision-encoder call when encoding history
# what the action head's reader branch reads: the lane reader's outputs, the light probabilities
READER_FEATURES = len(LANE_OUTPUTS) + len(LIGHT_CLASSES)


@dataclass
class PretrainedComponents:
    """Pretrained modules replacing freshly initialised ones (``paper`` preset)."""

    llm: LlamaModel | None = None
    unet: UNetMotionModel | None = None
    vae: AutoencoderKL | None = None
    clip: CLIPVisionModel | None = None


class LMGenDrive(nn.Module):
    """The unified planning + multi-view video generation network."""

    def __init__(
        self,
        config: ModelConfig,
        tokenizer: PreTrainedTokenizerBase | None = None,
        components: PretrainedComponents | None = None,
    ):
        super().__init__()
        parts = components or PretrainedComponents()
        self.config = config
        self.tokenizer = tokenizer
        if tokenizer is not None and len(tokenizer) > config.llm.vocab_size:
            raise ConfigError(
                f"tokenizer has {len(tokenizer)} tokens but llm.vocab_size is "
                f"{config.llm.vocab_size}"
            )
        self.vision = VisionEncoder(
            config.vision,
            len(config.views),
            config.views.index("front") if config.vision.sees_center else None,
        )
        self.compressor = FrameCompressor(config.qformer, config.vision.dim, config.llm.hidden)
        self.llm = PlannerLLM(
            config.llm,
            config.vision.num_waypoints,
            backbone=parts.llm,
            reader_features=READER_FEATURES if config.llm.action_reads_readers else 0,
        )
        self.conditioner = WorldConditioner(config, config.llm.hidden, clip=parts.clip)
        self.generator = WorldGenerator(config, unet=parts.unet, vae=parts.vae)

    @property
    def device(self) -> torch.device:
        return self.llm.action_queries.device

    # ----------------------------------------------------------------- shared pieces

    def add_readers(self, seed: int, lane: bool, light: bool) -> None:
        """Give the vision encoder the readers asked for that it lacks, initialised from ``seed``
        (:class:`~lmgendrive.vision.PixelReader`): a trained checkpoint gains them for stage 1's
        ``readers_only``, every other weight as it was."""
        vision = self.config.vision.model_copy(
            update={
                "lane_reader": lane or self.config.vision.lane_reader,
                "light_reader": light or self.config.vision.light_reader,
            }
        )
        if vision.light_reader and not self.config.vision.sees_center:
            self.vision.front_index = self.config.views.index("front")
        self.config = self.config.model_copy(update={"vision": vision})
        self.vision.config = vision
        weight = self.vision.proj.weight
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if vision.lane_reader and self.vision.lane_reader is None:
                views = self.vision.view_embed.shape[0]
                reader = PixelReader(vision, views, len(LANE_OUTPUTS))
                self.vision.lane_reader = reader.to(weight.device, weight.dtype)
            if vision.light_reader and self.vision.light_reader is None:
                reader = PixelReader(vision, 1, len(LIGHT_CLASSES))
                self.vision.light_reader = reader.to(weight.device, weight.dtype)

    def add_reader_branch(self, seed: int) -> None:
        """Give the action head its reader branch (``llm.action_reads_readers``, initialised from
        ``seed``) if it lacks it: it starts at zero, so the plans stay what they were until stage
        2's ``reader_branch_only`` trains it."""
        llm = self.config.llm.model_copy(update={"action_reads_readers": True})
        self.config = ModelConfig.model_validate(
            {**self.config.model_dump(), "llm": llm.model_dump()}
        )
        if self.llm.reader_branch is None:
            weight = self.llm.action_queries
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                branch = ReaderBranch(self.config.llm.hidden, READER_FEATURES)
            self.llm.reader_branch = branch.to(weight.device, weight.dtype)
        self.llm.config = self.config.llm

    def tokenize(self, instructions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Instruction ids and mask (B, L) on the model's device."""
        if self.tokenizer is None:
            raise ConfigError(
                "this model has no tokenizer; load it with load_checkpoint() or pass one"
            )
        if isinstance(instructions, str) or not all(isinstance(s, str) for s in instructions):
            raise BadInputError("instructions must be a list of strings, one per sample")
        return encode_instructions(
            self.tokenizer, instructions, self.config.llm.max_instruction_tokens, self.device
        )

    def encode_history(self, pixels: torch.Tensor) -> torch.Tensor:
        """Per-frame LLM tokens (B, T, Q, llm_hidden) of ``pixels`` (B, T, V, 3, H, W)."""
        return self.compress_history(self.vision_tokens(pixels))

    def encode_observed(
        self, pixels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`encode_history` of ``pixels`` and, at the last frame, read from the same
        encoding: the traffic-light class probabilities (B, len(LIGHT_CLASSES)) and the lane
        reader's outputs (B, 3) of :meth:`encode_frames`."""
        tokens, light, lane = self.encode_frames(pixels)
        return self.compress_history(tokens), light[:, -1], None if lane is None else lane[:, -1]

    def encode_for_planner(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`encode_history` of ``pixels`` and :meth:`planner_readers` at the last frame."""
        history, light, lane = self.encode_observed(pixels)
        return history, self.planner_readers(light, lane)

    def planner_readers(
        self, light: torch.Tensor, lane: torch.Tensor | None
    ) -> torch.Tensor | None:
        """What the action head's reader branch reads (``llm.action_reads_readers``) of
        :meth:`encode_frames`'s ``light`` (..., 4) and ``lane`` (..., 3): both, lane first
        (..., 7); None for a model without the branch."""
        if self.llm.reader_branch is None:
            return None
        if lane is None:
            raise ConfigError("llm.action_reads_readers needs the lane reader (vision.lane_reader)")
        return torch.cat([lane, light], dim=-1)

    def vision_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """The vision encoder's per-frame Q-Former input (B, T, N, D) of ``pixels``
        (B, T, V, 3, H, W)."""
        return self.encode_frames(pixels)[0]

    def encode_frames(
        self, pixels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`vision_tokens` of ``pixels`` (B, T, V, 3, H, W) and, per frame, read from the
        same encoding: the traffic-light class probabilities (B, T, len(LIGHT_CLASSES)) of its
        light reader where the encoder has one, else of its light head (the light query's output
        is the Q-Former input's last token), and its lane reader's outputs (B, T, 3; offset m,
        heading rad, in-lane probability), None without one."""
        b, t = pixels.shape[:2]
        dtype = self.vision.proj.weight.dtype
        tokens, lanes, lights = [], [], []
        for chunk in pixels.flatten(0, 1).split(ENCODE_CHUNK):
            visual = self.vision(chunk.to(dtype))
            tokens.append(visual.for_qformer(self.config.vision.bev_pool))
            near = self.vision.near_light_logits(visual)
            logits = near if near is not None else self.vision.light_head(visual.light[:, 0])
            lights.append(logits.float().softmax(-1))
            lane = self.vision.lane_pose(visual)
            if lane is not None:
                lane = lane.float()
                lane = torch.cat([lane[:, :2], torch.sigmoid(lane[:, 2:])], dim=1)
            lanes.append(lane)
        lane = None if lanes[0] is None else torch.cat(lanes).unflatten(0, (b, t))
        light = torch.cat(lights).unflatten(0, (b, t))
        return torch.cat(tokens).unflatten(0, (b, t)), light, lane

    def compress_history(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-frame LLM tokens (B, T, Q, llm_hidden) of :meth:`vision_tokens` output
        (B, T, N, D)."""
        chunks = [self.compressor(chunk) for chunk in tokens.flatten(0, 1).split(ENCODE_CHUNK)]
        return torch.cat(chunks).unflatten(0, tokens.shape[:2])

    def pixels(self, frames: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
        """uint8 ``frames`` (..., H, W, 3) as the model's pixels (..., 3, H, W) in [-1, 1], on its
        device."""
        return to_pixels(frames, self.config.image_size, self.device, name)

    def check_views(self, pixels: torch.Tensor, name: str) -> None:
        """Raise :class:`BadInputError` unless ``pixels`` (B, V, ...) has the model's V views, or
        its vision encoder's views (the centre view after them, where the encoder has one)."""
        views, seen = self.config.views, self.config.vision_views
        if pixels.shape[1] not in (len(views), len(seen)):
            also = f", or {len(seen)} ({', '.join(seen)})" if seen != views else ""
            raise BadInputError(
                f"{name} has {pixels.shape[1]} views, the model expects {len(views)} "
                f"({', '.join(views)}){also}"
            )

    def camera_views(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels`` (B, V, ...) without the centre view, if given: what the generator sees."""
        return pixels[:, : len(self.config.views)]

    def _think(self, state: RolloutState, with_world: bool) -> LLMOutput:
        embeds = self.llm.embed_instructions(state.instruction_ids)
        return self.llm(
            embeds,
            state.instruction_mask,
            state.history,
            state.speed,
            state.waypoints,
            with_world,
            self.planner_readers(state.light, state.lane),
        )

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        """Eval mode and no autograd for the block. The mode is switched only when training:
        ``eval()`` walks every submodule (world generator included), which cost a closed loop
        about a third of each frame when done three times per frame on a model already in eval."""
        was_training = self.training
        if was_training:
            self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            if was_training:
                self.train()

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
        pixels = self.pixels(seed_frames, "seed_frames")
        if pixels.ndim != 6:
            raise BadInputError(
                "seed_frames must be (B, V, T, H, W, 3), got "
                f"{tuple(torch.as_tensor(seed_frames).shape)}"
            )
        self.check_views(pixels, "seed_frames")
        b = pixels.shape[0]
        if len(instructions) != b:
            raise BadInputError(f"{len(instructions)} instructions for {b} samples")
        seeds = [0] * b if seeds is None else list(seeds)
        if len(seeds) != b:
            raise BadInputError(f"{len(seeds)} seeds for {b} samples")
        ids, mask = self.tokenize(instructions)
        with self._inference():
            history, light, lane = self.encode_observed(
                pixels[:, :, -self.config.llm.history_frames :].transpose(1, 2)
            )
        return RolloutState(
            instruction_ids=ids,
            instruction_mask=mask,
            history=history,
            last_pixels=self.camera_views(pixels)[:, :, -1],
            speed=self._speed(speed, b),
            waypoints=self._driven(driven, b)
            if driven is not None
            else torch.zeros(b, self.config.vision.num_waypoints, 2, device=self.device),
            controllers=[WaypointController() for _ in range(b)],
            generators=[torch.Generator().manual_seed(int(s)) for s in seeds],
            light=light,
            lane=lane,
        )

    def _speed(
        self, speed: np.ndarray | torch.Tensor | Sequence[float] | None, b: int
    ) -> torch.Tensor:
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
            raise BadInputError(
                f"driven must have shape ({b}, {k}, 2): the ego's positions at the {k} waypoint "
                f"times of the last step, in that step's ego frame; got {tuple(d.shape)}"
            )
        if not torch.isfinite(d).all():
            raise BadInputError("driven has non-finite values")
        return d.to(self.device)

    def _observe(self, state: RolloutState, pixels: torch.Tensor) -> None:
        """Append ``pixels`` (B, V, T, 3, H, W) to the history and make the last frame the
        context."""
        tokens, state.light, state.lane = self.encode_observed(pixels.transpose(1, 2))
        state.history = torch.cat([state.history, tokens], dim=1)[
            :, -self.config.llm.history_frames :
        ]
        state.last_pixels = self.camera_views(pixels)[:, :, -1]

    def _act(self, state: RolloutState, out: LLMOutput) -> PlanResult:
        waypoints = out.waypoints.cpu().numpy().astype(np.float32)
        speed = state.speed.cpu().numpy()
        steps = [
            ctrl.step(wp, float(v))
            for ctrl, wp, v in zip(state.controllers, waypoints, speed, strict=True)
        ]
        controls = np.array([[c.throttle, c.brake, c.steer] for c in steps], dtype=np.float32)
        state.waypoints = out.waypoints.to(state.waypoints.dtype)
        return PlanResult(
            waypoints=waypoints,
            completion=torch.sigmoid(out.completion_logit).cpu().numpy(),
            controls=controls,
            light=state.light.cpu().numpy(),
        )

    def observe(
        self,
        state: RolloutState,
        frames: np.ndarray | torch.Tensor | None = None,
        speed: np.ndarray | torch.Tensor | Sequence[float] | None = None,
        driven: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Feed measurements into ``state`` without acting: new real ``frames`` uint8
        (B, V, H, W, 3) or (B, V, T, H, W, 3), the measured ``speed`` (B,) and the path ``driven``
        (B, K, 2) since the last plan.

        ``driven`` is odometry: where the ego was at the K waypoint times (0.2 .. 0.8 s) after the
        last step began, in the ego frame at that moment; exactly what the previous action means in
        training (the expert's waypoints one step earlier). Without it the model takes its own last
        plan for the path driven, as in generation; a real car seldom drove exactly that, and the
        planner reads the car's acceleration from this path."""
        with self._inference():
            if frames is not None:
                pixels = self.pixels(frames, "frames")
                if pixels.ndim not in (5, 6):
                    raise BadInputError(
                        f"frames must be (B, V, H, W, 3) or (B, V, T, H, W, 3), "
                        f"got {tuple(torch.as_tensor(frames).shape)}"
                    )
                pixels = pixels[:, :, None] if pixels.ndim == 5 else pixels
                self.check_views(pixels, "frames")
                self._observe(state, pixels)
            if speed is not None:
                state.speed = self._speed(speed, state.batch_size)
            if driven is not None:
                state.waypoints = self._driven(driven, state.batch_size)

    def instruct(self, state: RolloutState, instructions: Sequence[str]) -> None:
        """Give ``state`` new instructions (one per sample), as a closed loop does when the route
        issues the next one; the cached history stays."""
        if len(instructions) != state.batch_size:
            raise BadInputError(f"{len(instructions)} instructions for {state.batch_size} samples")
        state.instruction_ids, state.instruction_mask = self.tokenize(instructions)

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
        """Offline generation step: the action and ``frames_per_step`` future frames of every view,
        sampled with ``sampler`` (default the config's); both are fed back into ``state``."""
        sampler = sampler or self.config.sampler
        with self._inference():
            out = self._think(state, with_world=True)
            plan = self._act(state, out)
            cond = self.conditioner(state.last_pixels, out.world)
            frames = sample_frames(
                self.generator,
                cond,
                self.conditioner.null_cond,
                state.last_pixels,
                state.generators,
                sampler,
                ego_poses=self.planned_poses(out.waypoints),
            )
            self._observe(state, frames)
            state.speed = speed_after(out.waypoints)
            state.steps += 1
        return StepResult(
            frames=to_uint8(frames),
            waypoints=plan.waypoints,
            completion=plan.completion,
            controls=plan.controls,
        )

    def planned_poses(self, waypoints: torch.Tensor) -> torch.Tensor:
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
        """Autoregressive generation of ``horizon`` frames (a multiple of ``frames_per_step``) per
        view, from seed frames, the speed and (when known) the path driven over the last step at the
        last seed frame (:meth:`start`).

        Deterministic given ``seeds``: sample i draws its noise only from ``seeds[i]``, so its
        result does not depend on its batch mates. ``on_step(step_index, result)`` is called after
        each step.
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
            "motion_modules": sum(
                p.numel() for n, p in unet.named_parameters() if "motion_modules" in n
            ),
            "vae": count(self.generator.vae),
            "total": count(self),
        }


def speed_after(waypoints: torch.Tensor) -> torch.Tensor:
    """Speed (B,) at the last waypoint, from the last waypoint gap: the next step starts there."""
    return (waypoints[:, -1] - waypoints[:, -2]).norm(dim=-1).float() / WAYPOINT_DT
