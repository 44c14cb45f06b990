"""The training recipe: a YAML file validated by pydantic (unknown keys are rejected).

Example (``jobs/train_demo.yaml`` is the full one)::

    preset: demo
    init_seed: 0
    seed: 0
    workdir: out/train_demo          # per-stage states, logs and loss curves
    output: checkpoints/demo         # the final checkpoint (after the last stage)
    data:
      towns: {first: 1, count: 40}   # or a list of town seeds
      weathers: [clear_noon, rain]
      frames: 160
      size: 64
      cache: out/train_demo/scenes   # pre-render to an LMDrive root (or omit: render on the fly)
      # lmdrive_root: /data/lmdrive  # instead of procedural towns
    stages:
      "1": {iterations: 2000, batch_size: 16, lr: 7.5e-4, warmup: 100}
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lmgendrive.config import PRESETS, ModelConfig, preset_config
from schemas.errors import ConfigError
from schemas.sampler import SamplerOverride
from schemas.scene import WEATHERS
from schemas.user_yaml import read_yaml

STAGES = (0, 1, 2, 3, 4)
RENAMED = {
    "sampler_steps": "sampler.steps",
    "sampler_strength": "sampler.strength",
    "sampler_warp_start": "sampler.warp_start",
}
FED_BACK = SamplerOverride(steps=3, strength=0.8, warp_start=False)
"""Stage 3's sampler of the fed-back videos, over the model's (not in the paper, which samples them
from noise; presets other than ``paper``): few steps from the still last frame, independent of the
model's inference sampler (a stage's ``sampler`` overrides these)."""

PositiveInt = Annotated[int, Field(ge=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TownRange(_Strict):
    """Town seeds ``first .. first + count - 1``."""

    first: Annotated[int, Field(ge=0)]
    count: PositiveInt

    def seeds(self) -> list[int]:
        return list(range(self.first, self.first + self.count))


class DataConfig(_Strict):
    """Where the training drives come from: procedural towns (rendered on the fly, or once into
    ``cache`` as an LMDrive root) or an existing LMDrive root. A procedural drive enters its route
    at 3-6 m/s; ``rest_start_routes`` more routes per town (the next route seeds) start at rest,
    as every LMDrive / LangAuto route does; ``recovery_routes`` more per town (the route seeds after
    those) are recovery drives: the expert's controls perturbed now and then, and it recovers
    (:mod:`scenes.procedural.recovery`; meant for planner batches, which skip the windows whose
    waypoints show a perturbation); ``displaced_routes`` more per town (the route seeds after
    those) are seen from a camera moved across the lane and turned
    (:mod:`scenes.procedural.displaced`; frames for the lane reader); ``relit_routes`` more per town
    (the route seeds after those) have their lights drawn in states the expert did not drive by
    (:mod:`scenes.procedural.relit`; frames for the light reader)."""

    towns: TownRange | list[Annotated[int, Field(ge=0)]] = TownRange(first=1, count=1)
    routes_per_town: PositiveInt = 1
    route_seed: Annotated[int, Field(ge=0)] = 0
    rest_start_routes: Annotated[int, Field(ge=0)] = 0  # more per town, starting at rest
    recovery_routes: Annotated[int, Field(ge=0)] = 0  # more per town, perturbed and recovering
    displaced_routes: Annotated[int, Field(ge=0)] = 0  # more per town, the camera displaced
    relit_routes: Annotated[int, Field(ge=0)] = 0  # more per town, the lights drawn otherwise
    weathers: list[Literal[WEATHERS]] = ["clear_noon"]  # type: ignore[valid-type]
    frames: Annotated[int, Field(ge=24)] = 160
    size: Annotated[int, Field(ge=16, le=1024)] = 64
    cache: Path | None = None
    lmdrive_root: Path | None = None
    context_frames: PositiveInt = 4
    workers: Annotated[int, Field(ge=0)] = 2

    def town_seeds(self) -> list[int]:
        return self.towns.seeds() if isinstance(self.towns, TownRange) else list(self.towns)

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if not self.town_seeds():
            raise ValueError("towns must name at least one town seed")
        if not self.weathers:
            raise ValueError("weathers must name at least one weather")
        return self


class PlannerConfig(_Strict):
    """Stages 2-3: an extra planner-only batch per iteration (waypoint L1 + heading + completion, no
    generation), drawn by maneuver: ``junction_share`` of it from windows ``entry_zone`` = (frames
    before, frames after) a junction entry, in equal thirds turning left, going straight and turning
    right; ``departure_share`` from windows where the car at rest sets off within the plan's 0.8 s
    (at a green light, from the start of a route, after a halt: rare in recorded drives, and a
    planner that never learnt them never leaves a standstill); ``approach_share`` from windows
    before the entry zone within ``approach_m`` metres of the junction, at any speed (told to turn,
    braking or queued, still straight on); ``recovery_share`` from the windows up to 2 s after a
    recovery drive's perturbations (off the lane centre, heading askew or slowed, and the expert
    bringing the car back); ``slowing_share`` from the other windows where the plan starts to
    slow down while the path driven into them does not (braking for a light, a car or a
    pedestrian; not in the paper, which samples LMDrive's data as recorded); ``stopping_share``
    from the windows stopping hard for a red light while moving (mostly the releases of a
    recovery drive's speed holds; not in the paper either); ``onpolicy_share`` from the drives in
    ``onpolicy``, an LMDrive root of a model's own closed-loop drives labelled by the expert
    (``lmgd drive --record``: DAgger, not in the paper); the rest from everywhere else.
    ``brake_weight``: the weight of :func:`lmgendrive.train.losses.brake_loss`, a hinge on which
    side of LMDrive's brake threshold the plan's speed falls (not in the paper; 0: off).
    Its drives: ``routes_per_town`` routes, ``rest_start_routes`` at-rest routes and
    ``recovery_routes`` recovery drives per town (default ``data``'s; windows whose waypoints show
    a perturbation are never drawn). ``start_windows``: windows also from each drive's first
    frames, the history before the first frame filled with it, as a closed loop starts. With
    probability ``straight_previous`` a window's previous action is replaced by driving straight
    on (see :func:`lmgendrive.train.stages.straighten_previous_action`); with probability
    ``ego_status_dropout`` its speed and driven path are zeroed, as at rest (not in the paper; see
    :func:`lmgendrive.train.stages.drop_ego_status`). ``token_cache``: encode
    every frame of those drives once with the frozen vision encoder and read its tokens instead of
    pixels (:class:`lmgendrive.train.tokens.VisionTokenCache`; the same losses at a fraction of the
    cost, held in memory: ~5 KB per frame for ``demo``, too much for LMDrive-scale data with the
    paper preset)."""

    batch_size: PositiveInt = 16
    junction_share: Annotated[float, Field(ge=0, le=1)] = 0.75
    entry_zone: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]] = (16, 8)
    routes_per_town: PositiveInt | None = None
    rest_start_routes: Annotated[int, Field(ge=0)] | None = None
    recovery_routes: Annotated[int, Field(ge=0)] | None = None
    departure_share: Annotated[float, Field(ge=0, le=1)] = 0.0
    approach_share: Annotated[float, Field(ge=0, le=1)] = 0.0
    approach_m: Annotated[float, Field(gt=0)] = 30.0
    recovery_share: Annotated[float, Field(ge=0, le=1)] = 0.0
    slowing_share: Annotated[float, Field(ge=0, le=1)] = 0.0
    stopping_share: Annotated[float, Field(ge=0, le=1)] = 0.0
    start_windows: bool = False
    straight_previous: Annotated[float, Field(ge=0, le=1)] = (
        0.0  # share whose previous action drives straight
    )
    ego_status_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    brake_weight: Annotated[float, Field(ge=0)] = 0.0
    token_cache: bool = False
    onpolicy: Path | None = None
    onpolicy_share: Annotated[float, Field(ge=0, le=1)] = 0.0

    def drives(self, data: DataConfig) -> DataConfig:
        """``data`` with this planner's own drive counts where it sets them."""
        keys = ("routes_per_town", "rest_start_routes", "recovery_routes")
        return data.model_copy(
            update={k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        )

    @model_validator(mode="after")
    def _check(self) -> PlannerConfig:
        shares = (
            self.junction_share,
            self.departure_share,
            self.approach_share,
            self.recovery_share,
            self.slowing_share,
            self.stopping_share,
            self.onpolicy_share,
        )
        if sum(shares) > 1.0:
            raise ValueError(
                "junction_share + departure_share + approach_share + recovery_share + "
                "slowing_share + stopping_share + onpolicy_share must be <= 1, got "
                + " + ".join(f"{x:g}" for x in shares)
            )
        if (self.onpolicy is None) != (self.onpolicy_share == 0):
            raise ValueError(
                "onpolicy (a folder of `lmgd drive --record` drives) and onpolicy_share > 0 go "
                "together: set both or neither"
            )
        return self


class StageConfig(_Strict):
    """One stage: optimisation (AdamW, warm-up + cosine to ``min_lr_ratio`` x lr, clipping) and
    bookkeeping (checkpoint and log intervals in iterations)."""

    iterations: PositiveInt
    batch_size: PositiveInt
    lr: Annotated[float, Field(gt=0)]
    weight_decay: Annotated[float, Field(ge=0)] = 0.05
    warmup: Annotated[int, Field(ge=0)] = 0
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.05
    clip: Annotated[float, Field(gt=0)] = 1.0
    checkpoint_every: PositiveInt = 100
    log_every: PositiveInt = 10
    # stage 3-4 curriculum, equal shares (the paper: one to three steps)
    sequence_steps: list[Annotated[int, Field(ge=1, le=3)]] = [2, 3]
    sampler: SamplerOverride = SamplerOverride()  # stages 3-4: the fed-back videos' (see fed_back)
    planner: PlannerConfig | None = None  # stages 2-3: planner batches balanced by maneuver
    context_noise: Annotated[float, Field(ge=0, lt=1)] = 0.0  # stages 2 and 4, diffusion_loss
    # stage 1: recovery drives per town added to its frames (not in LMDrive's recipe): the encoder
    # then sees the car askew on its lane, and its waypoint head learns the way back
    recovery_routes: Annotated[int, Field(ge=0)] = 0
    # stage 1: the light head learns the governing light's state only within this many metres of
    # its stop line, "none" farther, as LMDrive's encoder learns is_red_light_present (the light's
    # trigger volume or 8 m, where its expert brakes); default: as the drives record it (45 m)
    light_range: Annotated[float, Field(gt=0)] | None = None
    # stage 1: the light reader learns the governing light's state within this many metres of its
    # stop line, "none" farther (default lmgendrive.train.perception.NEAR_LIGHT_M)
    near_light_range: Annotated[float, Field(gt=0)] | None = None
    # stage 1: displaced-camera drives per town added to its frames (scenes.procedural.displaced):
    # the car seen off its lane centre and askew, with the lane pose the lane reader learns
    displaced_routes: Annotated[int, Field(ge=0)] = 0
    # stage 1: relit drives per town added to its frames (scenes.procedural.relit): the lights drawn
    # red, yellow or green whatever the expert does, the light reader's labels the drawn state
    relit_routes: Annotated[int, Field(ge=0)] = 0
    # stage 1: train the readers (model vision.lane_reader, vision.light_reader) alone, on the
    # frozen encoder: a trained checkpoint gains them and its planner's tokens stay as they were
    readers_only: bool = False
    # stage 2: train the action head's reader branch (model llm.action_reads_readers) alone, on
    # planner batches alone: every other weight, and so the video, stays the starting checkpoint's
    reader_branch_only: bool = False

    @model_validator(mode="after")
    def _check(self) -> StageConfig:
        if self.warmup >= self.iterations:
            raise ValueError(f"warmup ({self.warmup}) must be below iterations ({self.iterations})")
        if sorted(self.sequence_steps) != self.sequence_steps or not self.sequence_steps:
            raise ValueError("sequence_steps must be a non-empty, non-decreasing list of 1 to 3")
        return self

    def fed_back(self, stage: int = 3, paper: bool = False) -> SamplerOverride:
        """The sampler of a stage's fed-back videos, to apply over the model's: in stage 3
        :data:`FED_BACK` with this stage's ``sampler`` keys (``paper``: the model's own sampler,
        from noise, as the paper feeds back generated videos); in stage 4 this stage's keys alone
        (its generator learns the inference sampler's own output, and the checkpoint keeps it)."""
        if stage == 4 or paper:
            return self.sampler
        return FED_BACK.model_copy(update=self.sampler.model_dump(exclude_none=True))


class PrecisionConfig(_Strict):
    """How the stages compute. ``compute``: the autocast dtype of forward and backward (default:
    the model config's dtype on an accelerator, float32 on a CPU); trainable parameters and the
    optimizer state stay float32 whatever it is, frozen parameters are held in it.
    ``gradient_checkpointing``: recompute the LLM's and the UNet's activations in backward."""

    compute: Literal["float32", "bfloat16"] | None = None
    gradient_checkpointing: bool = False


class TrainConfig(_Strict):
    """A whole training run: model preset (``model`` overrides its keys, e.g. ``pretrained``
    directories) and init seed, or a trained checkpoint to ``start_from``; data, precision, the
    stages to run, where to write."""

    preset: str
    model: dict[str, Any] = {}
    # a trained checkpoint (directory, or "demo") the first configured stage starts from instead
    # of the preset's fresh model; where the recipe's model has readers it lacks, stage 1's
    # readers_only adds them
    start_from: str | None = None
    init_seed: int = 0
    seed: int = 0
    workdir: Path
    output: Path
    data: DataConfig = DataConfig()
    precision: PrecisionConfig = PrecisionConfig()
    stages: dict[Literal["0", "1", "2", "3", "4"], StageConfig]

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid: {sorted(PRESETS)}")
        try:
            model = self.network_config()
        except ConfigError as exc:
            raise ValueError(str(exc).replace("model config: config.", "model.")) from None
        if not self.stages:
            raise ValueError("stages must configure at least one stage")
        if "0" in self.stages and model.pretrained.stable_diffusion is not None:
            raise ValueError(
                "stage 0 trains a VAE from scratch, but model.pretrained.stable_diffusion names "
                "SD-1.5's, which the paper keeps frozen: remove stage 0"
            )
        for name, stage in self.stages.items():
            if stage.planner is not None and int(name) not in (2, 3):
                raise ValueError(
                    f"stage {name}: planner batches exist in stages 2 and 3 only "
                    "(the LLM trains there)"
                )
            if (
                stage.planner is not None
                and stage.planner.recovery_share
                and not stage.planner.drives(self.data).recovery_routes
            ):
                raise ValueError(
                    f"stage {name}: planner recovery_share needs recovery drives: set "
                    "recovery_routes (in planner or data)"
                )
            if stage.recovery_routes and name != "1":
                raise ValueError(
                    f"stage {name}: recovery_routes exists in stage 1 only (its frames train the "
                    "vision encoder; the planner's recovery drives are planner.recovery_routes)"
                )
            if (stage.displaced_routes or stage.relit_routes or stage.readers_only) and name != "1":
                raise ValueError(
                    f"stage {name}: displaced_routes, relit_routes and readers_only exist in "
                    "stage 1 only (the vision encoder and its readers train there)"
                )
            if stage.readers_only and not (model.vision.lane_reader or model.vision.light_reader):
                raise ValueError(
                    f"stage {name}: readers_only trains the readers, which this model does not "
                    "have: set model.vision.lane_reader and/or model.vision.light_reader: true"
                )
            if stage.reader_branch_only and not (
                name == "2" and stage.planner is not None and model.llm.action_reads_readers
            ):
                raise ValueError(
                    f"stage {name}: reader_branch_only trains the action head's reader branch on "
                    "planner batches: it exists in stage 2 only, with planner batches, for a model "
                    "with llm.action_reads_readers: true"
                )
            if stage.near_light_range is not None and not (
                name == "1" and model.vision.light_reader
            ):
                raise ValueError(
                    f"stage {name}: near_light_range is the light reader's label range: it exists "
                    "in stage 1 only, for a model with vision.light_reader: true"
                )
            if stage.light_range is not None and name != "1":
                raise ValueError(
                    f"stage {name}: light_range exists in stage 1 only (the light head trains "
                    "there; the encoder is frozen after it)"
                )
            if name == "4" and min(stage.sequence_steps) < 2:
                raise ValueError(
                    "stage 4: sequence_steps must be 2 or 3 (one step has no rollout to train on)"
                )
            if stage.context_noise > 0 and not model.diffusion.concat_last_latent:
                raise ValueError(
                    f"stage {name}: context_noise noises the context latent the UNet reads "
                    "(model diffusion.concat_last_latent), which this model does not have"
                )
            if stage.context_noise > 0 and int(name) not in (2, 4):
                raise ValueError(
                    f"stage {name}: context_noise exists in stages 2 and 4 only "
                    "(the world generator trains there)"
                )
        return self

    def network_config(self) -> ModelConfig:
        """The preset's model config with the ``model`` keys set over it (nested sections merge);
        an unknown key or a wrong value raises :class:`ConfigError` naming it."""
        return ModelConfig.from_dict(_merged(preset_config(self.preset).model_dump(), self.model))

    def stage_data(self, stage: int) -> DataConfig:
        """The drives stage ``stage`` trains on: ``data``, plus stage 1's recovery, displaced and
        relit drives."""
        config = self.stage(stage)
        extra = {
            key: getattr(config, key)
            for key in ("recovery_routes", "displaced_routes", "relit_routes")
            if getattr(config, key)
        }
        return self.data.model_copy(update=extra) if extra else self.data

    def stage_numbers(self) -> list[int]:
        return sorted(int(s) for s in self.stages)

    def stage(self, stage: int) -> StageConfig:
        if str(stage) not in self.stages:
            raise ConfigError(
                f"stage {stage} is not configured; this recipe has stages {self.stage_numbers()}"
            )
        return self.stages[str(stage)]  # type: ignore[index]


def _merged(base: dict, update: dict) -> dict:
    """``base`` with ``update``'s keys set over it, merging nested dicts."""
    out = dict(base)
    for key, value in update.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = _merged(base[key], value) if nested else value
    return out


def parse_config(data: object, where: str = "config") -> TrainConfig:
    """Validate a parsed recipe; every problem is reported as one :class:`ConfigError`."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"  {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {_message(e)}"
            for e in exc.errors()
        ]
        raise ConfigError(
            f"{where} is not a valid training recipe:\n" + "\n".join(problems)
        ) from None


def _message(error: dict) -> str:
    """A validation error's message; a renamed key's names its new place."""
    key = str(error["loc"][-1]) if error["loc"] else ""
    if error["type"] == "extra_forbidden" and key in RENAMED:
        return f"now {RENAMED[key]} (a stage's sampler has the model sampler's keys)"
    return error["msg"]


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a YAML recipe."""
    return parse_config(read_yaml(path, "training recipe"), str(path))


def parse_stage(text: str) -> list[int] | None:
    """``--stage`` value: one of 0..4, or ``all`` (``None``: every configured stage)."""
    if text == "all":
        return None
    if text not in {str(s) for s in STAGES}:
        raise ConfigError(f"--stage must be 0, 1, 2, 3, 4 or all, got {text!r}")
    return [int(text)]
