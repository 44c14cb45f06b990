"""Sampler settings under one set of names: a checkpoint's sampler, a job's override of it, and the
sampler of the training recipe's fed-back videos.

:class:`SamplerConfig` is a complete setting (a checkpoint's ``config.json`` ``sampler`` section);
:class:`SamplerOverride` has the same keys, each optional, and replaces a base sampler's values
where set (a job's ``sampler`` section, a training stage's ``sampler``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.errors import ConfigError

Scheduler = Annotated[
    Literal["ddim", "dpmsolver++"],
    Field(description="diffusers scheduler: ddim (DDIM) or dpmsolver++ (DPM-Solver++, 2nd order)"),
]
Steps = Annotated[int, Field(ge=1, le=1000, description="denoising steps of the whole schedule")]
Guidance = Annotated[float, Field(ge=1.0, description="classifier-free guidance scale (1 = off)")]
Strength = Annotated[
    float,
    Field(
        gt=0.0,
        le=1.0,
        description=(
            "1: start from pure noise; below 1: from the last context frame's latent noised to "
            "that share of the schedule, running only that share of the steps"
        ),
    ),
]
ContextDetail = Annotated[
    bool,
    Field(description=("add the context frame's detail lost by the VAE to every generated frame")),
]
WarpStart = Annotated[
    bool,
    Field(
        description=(
            "with strength below 1: start from the context frames moved by the step's planned "
            "ego motion, not held still"
        )
    ),
]
ContextNoise = Annotated[
    float,
    Field(
        ge=0.0,
        lt=1.0,
        description=(
            "noise the context frame's latent (the UNet's concatenated condition) to this share of "
            "the schedule: the level a generator trained with noisy context reads through"
        ),
    ),
]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SamplerConfig(_Frozen):
    """How the world generator samples: scheduler, denoising steps, classifier-free guidance scale
    (1 = off) and ``strength``: 1 starts from pure noise (the paper); below 1 starts from the last
    context frame's latent noised to that share of the schedule and runs only that share of the
    steps (SDEdit-style initialisation; not in the paper).

    ``context_detail`` (not in the paper) adds each view's context-frame detail that the VAE loses,
    ``last - decode(encode(last))``, to every generated frame of that view. A small VAE drops most
    fine texture (on the demo's 64 px frames its reconstructions alone score FD-drive ~35x that of
    repeating the last frame); the UNet then only has to get the coarse change right. Detail that
    should move stays put, so it suits short steps from a sharp context frame.

    ``warp_start`` (not in the paper; with ``strength`` < 1) starts from the context frames moved by
    the step's planned ego motion (:mod:`lmgendrive.ego_warp`) instead of the last frame standing
    still, and moves ``context_detail`` with them: a low strength then keeps the frames clean and
    still drives forward and turns.

    ``context_noise`` (not in the paper) noises the context latent the UNet is conditioned on
    (``diffusion.concat_last_latent``) to that share of the schedule, with the sample's own noise:
    a generator trained with noisy context (a stage's ``context_noise``) then treats its own
    earlier output as it treated real frames, instead of copying its artefacts forward
    (GameNGen's noise augmentation).
    """

    scheduler: Scheduler = "ddim"
    steps: Steps = 25
    guidance: Guidance = 1.0
    strength: Strength = 1.0
    context_detail: ContextDetail = False
    warp_start: WarpStart = False
    context_noise: ContextNoise = 0.0

    @model_validator(mode="after")
    def _one_step_at_least(self) -> SamplerConfig:
        if round(self.steps * self.strength) < 1:
            raise ValueError(
                f"strength x steps must leave at least one denoising step, got "
                f"{self.strength} x {self.steps}"
            )
        return self


class SamplerOverride(_Frozen):
    """The sampler keys, each optional: a key left unset keeps the base sampler's value (for a job,
    the checkpoint's)."""

    scheduler: Scheduler | None = None
    steps: Steps | None = None
    guidance: Guidance | None = None
    strength: Strength | None = None
    context_detail: ContextDetail | None = None
    warp_start: WarpStart | None = None
    context_noise: ContextNoise | None = None

    def over(self, base: SamplerConfig, where: str = "sampler") -> SamplerConfig:
        """``base`` with the values set here; an inconsistent result raises :class:`ConfigError`."""
        values = {**base.model_dump(), **self.model_dump(exclude_none=True)}
        try:
            return SamplerConfig.model_validate(values)
        except ValidationError as e:
            problems = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
            raise ConfigError(f"{where}: {problems}") from None

    def resolved(self) -> SamplerConfig:
        """The complete setting this override names; an unset key raises :class:`ConfigError`."""
        unset = [name for name, value in self if value is None]
        if unset:
            raise ConfigError(
                f"sampler: {', '.join(unset)} unset; resolve the job's sampler "
                f"against the checkpoint's first"
            )
        return SamplerConfig.model_validate(self.model_dump())
