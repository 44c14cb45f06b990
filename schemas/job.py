"""Job specs (``jobs/*.yaml``): the pydantic model, loading with clear errors, and its JSON Schema.

Relative paths in a job (model directory, manifest, output, LMDrive roots) are relative to the
directory ``lmgd`` is run from.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.errors import ConfigError
from schemas.sampler import SamplerOverride
from schemas.scene import WEATHERS
from schemas.secrets import check_endpoint, redact
from schemas.shipped import data_root
from schemas.user_yaml import read_yaml

MODEL_PRESETS = ("tiny", "demo", "paper")
SCHEMA_PATH = data_root() / "jobs" / "job.schema.json"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProceduralRecipe(Strict):
    """Seed scenes from the procedural world: drives in each town and weather."""

    source: Literal["procedural"] = "procedural"
    towns: list[int] = Field(default=[1], min_length=1, description="town seeds")
    routes_per_town: int = Field(default=1, ge=1, description="drives per town and weather")
    route_seed: int = Field(default=0, ge=0, description="first route seed")
    weathers: list[str] = Field(default=["clear_noon"], min_length=1)
    frames: int = Field(default=200, ge=2, description="recorded frames per drive (10 Hz)")
    size: int = Field(default=128, ge=16, le=1024, description="rendered image size (square)")
    seed_frames: int = Field(default=8, ge=1, le=64, description="seed frames per task")
    stride: int = Field(default=40, ge=1, description="frames between seed points of a drive")
    samples_per_task: int = Field(default=1, ge=1)
    seed: int = Field(default=0, ge=0, description="base of the per-task sampling seeds")

    @field_validator("weathers")
    @classmethod
    def _weathers(cls, v: list[str]) -> list[str]:
        return _known_weathers(v)


def _known_weathers(v: list[str]) -> list[str]:
    bad = [w for w in v if w not in WEATHERS]
    if bad:
        raise ValueError(f"unknown weather(s) {bad}; valid: {', '.join(WEATHERS)}")
    return v


class LMDriveRecipe(Strict):
    """Seed scenes from an LMDrive-format dataset root (real CARLA recordings)."""

    source: Literal["lmdrive"]
    root: str = Field(description="dataset root with dataset_index.txt")
    routes: list[str] | None = Field(default=None, description="only these route folders")
    instruction_dict: str | None = Field(default=None, description="LMDrive instruction_dict.json")
    seed_frames: int = Field(default=8, ge=1, le=64)
    stride: int = Field(default=40, ge=1)
    samples_per_task: int = Field(default=1, ge=1)
    seed: int = Field(default=0, ge=0)


Recipe = Annotated[ProceduralRecipe | LMDriveRecipe, Field(discriminator="source")]


class CurateSpec(Strict):
    """Select corner cases by instruction and scene tags; expand counterfactuals."""

    categories: list[Literal["turn", "follow", "notice", "other"]] | None = None
    instruction_ids: list[int] | None = None
    text: str | None = Field(default=None, description="regular expression on the instruction text")
    misleading: bool | None = None
    weathers: list[str] | None = None
    night: bool | None = None
    pedestrians: bool | None = None
    red_light: bool | None = None
    junction: bool | None = None
    counterfactual: bool = Field(
        default=False, description="add every feasible alternative at junctions"
    )
    with_misleading: bool = Field(
        default=False, description="also add infeasible (misleading) alternatives"
    )
    cap_per_category: int | None = Field(default=None, ge=1)
    sample: int | None = Field(default=None, ge=1, description="keep this many tasks at random")
    seed: int = 0

    @field_validator("weathers")
    @classmethod
    def _weathers(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _known_weathers(v)

    @field_validator("text")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a valid regular expression: {e}") from None
        return v


class ManifestSpec(Strict):
    path: str | None = Field(default=None, description="existing manifest (.parquet or .jsonl)")
    build: Recipe | None = None
    curate: CurateSpec | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ManifestSpec:
        if (self.path is None) == (self.build is None):
            raise ValueError("give exactly one of 'path' or 'build'")
        return self


class ResourceSpec(Strict):
    workers: int = Field(default=1, ge=1)
    gpus_per_worker: float = Field(default=0.0, ge=0.0)
    cpus_per_worker: float = Field(default=1.0, gt=0.0)
    max_retries: int = Field(default=2, ge=0, description="retries of a failed unit")


class ShardingSpec(Strict):
    samples_per_shard: int = Field(default=8, ge=1)


class EncodingSpec(Strict):
    format: Literal["mp4", "png"] = "mp4"
    crf: int = Field(default=18, ge=0, le=51, description="H.264 constant rate factor (mp4)")


class StorageSpec(Strict):
    endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (else AWS_ENDPOINT_URL)"
    )
    region: str | None = Field(default=None, description="S3 region (else the AWS config)")

    @field_validator("endpoint_url")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        if v is not None:
            check_endpoint(v)
        return v


class QASpec(Strict):
    enabled: bool = True
    metrics: list[
        Literal["fid", "fvd", "fd_drive", "instruction_adherence", "action_video_agreement"]
    ] = Field(default=["fid", "fvd", "fd_drive", "instruction_adherence", "action_video_agreement"])
    weights_dir: str | None = Field(
        default=None, description="Inception / I3D weights (else LMGD_WEIGHTS_DIR)"
    )
    evaluator: str = Field(
        default="checkpoints/evaluator", description="FD-drive encoder checkpoint"
    )
    bootstrap: int = Field(default=200, ge=0)


class JobSpec(Strict):
    """One generation job: which model, which tasks, where the output goes, how to run."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: str = Field(description="checkpoint directory, or a preset: tiny, demo, paper")
    model_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description=(
            "sha256 of the checkpoint's weights: set, it pins them (a checkpoint holding other "
            "weights is refused); unset, the job fills it in when it starts, so that its output "
            "records the weights and a rerun with other weights behind the same path is refused "
            "instead of mixing two models' samples"
        ),
    )
    manifest: ManifestSpec
    output: str = Field(description="local directory or s3://bucket/prefix")
    storage: StorageSpec = StorageSpec()
    horizons: list[int] = Field(
        min_length=1, description="future frames, multiples of the model's frames_per_step"
    )
    sampler: SamplerOverride = Field(
        default=SamplerOverride(),
        description=(
            "overrides of the model's sampler: a key left unset takes the checkpoint's value"
        ),
    )
    resources: ResourceSpec = ResourceSpec()
    sharding: ShardingSpec = ShardingSpec()
    encoding: EncodingSpec = EncodingSpec()
    qa: QASpec = QASpec()

    @field_validator("horizons")
    @classmethod
    def _horizons(cls, v: list[int]) -> list[int]:
        bad = [h for h in v if h <= 0]
        if bad:
            raise ValueError(
                f"horizon(s) {bad} are not positive (whole steps of the model: "
                f"multiples of its frames_per_step)"
            )
        return sorted(set(v))

    @field_validator("output")
    @classmethod
    def _output(cls, v: str) -> str:
        if v.startswith("s3://") and not re.fullmatch(
            r"s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?", v
        ):
            raise ValueError(f"not a valid s3://bucket/prefix URI: {v!r}")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _ground_truth(self) -> JobSpec:
        b = self.manifest.build
        if isinstance(b, ProceduralRecipe) and b.seed_frames + max(self.horizons) > b.frames:
            raise ValueError(
                f"horizon {max(self.horizons)} needs {b.seed_frames + max(self.horizons)} "
                f"recorded frames (seed_frames {b.seed_frames} + horizon) for ground truth, "
                f"but manifest.build.frames is {b.frames}"
            )
        return self


def _sections() -> dict[str, tuple[type[BaseModel], ...]]:
    """The models behind each section of a job spec, by dotted path ('' is the top level)."""
    return {
        "": (JobSpec,),
        "manifest": (ManifestSpec,),
        "manifest.build": (ProceduralRecipe, LMDriveRecipe),
        "manifest.curate": (CurateSpec,),
        "sampler": (SamplerOverride,),
        "resources": (ResourceSpec,),
        "sharding": (ShardingSpec,),
        "encoding": (EncodingSpec,),
        "qa": (QASpec,),
        "storage": (StorageSpec,),
    }


def _unknown_key_hint(section: str, key: str) -> str:
    """'did you mean' a key of the same section, else the sections where ``key`` is valid."""
    sections = _sections()
    here = sorted({name for model in sections.get(section, ()) for name in model.model_fields})
    close = difflib.get_close_matches(key, here, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    elsewhere = [
        path or "the top level"
        for path, models in sections.items()
        if path != section and any(key in model.model_fields for model in models)
    ]
    return f" (it belongs under {' or '.join(elsewhere)})" if elsewhere else ""


def _describe(err: dict) -> str:
    parts = [str(p) for i, p in enumerate(err["loc"]) if i == 0 or err["loc"][i - 1] != "build"]
    loc = ".".join(parts)  # the discriminator tag after 'build' is not a key the user wrote
    if err["type"] == "extra_forbidden":
        return f"unknown key {loc!r}{_unknown_key_hint('.'.join(parts[:-1]), parts[-1])}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc or 'job'}: {msg}" + (
        f" (got {redact(repr(err['input']))})"
        if err["type"] != "missing" and not isinstance(err.get("input"), dict)
        else ""
    )


def parse_job(data: object, source: str = "job") -> JobSpec:
    """Validate a job spec given as plain data; every problem goes into one :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a job spec is a mapping of keys, got {type(data).__name__}")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        lines = [_describe(err) for err in e.errors()]
        if "stages" in data:
            lines.insert(
                0,
                f"this looks like a training recipe (it has 'stages'): train it with "
                f"`lmgd train --stage all --config {source}`",
            )
        raise ConfigError(f"{source}: invalid job spec:\n  " + "\n  ".join(lines)) from None


def load_job(path: str | Path) -> JobSpec:
    """Read and validate a YAML job spec."""
    return parse_job(read_yaml(path, "job spec"), str(path))


def json_schema() -> str:
    """The JSON Schema of job specs, for editors (``jobs/job.schema.json``)."""
    schema = JobSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "lmgendrive job spec"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
