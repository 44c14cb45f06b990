"""Checking a job before any model is loaded: the spec, the model reference (and the sampler the
job resolves to over the checkpoint's), the manifest it names and the scenes that manifest refers
to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from lmgendrive.checkpoint_meta import source_config
from lmgendrive.config import ModelConfig
from manifests.io import read_manifest
from scenes.registry import parse_procedural_ref
from schemas.errors import BadInputError, CheckpointError, ConfigError, SceneFormatError
from schemas.job import MODEL_PRESETS, JobSpec, LMDriveRecipe, load_job


@dataclass(frozen=True)
class JobCheck:
    job: JobSpec
    tasks: int | None  # known when the manifest is a file
    scenes: int | None


def check_model(model: str, horizons: Sequence[int]) -> ModelConfig:
    """The model config of a preset name, or of a checkpoint directory holding config.json and
    model.safetensors, read without loading weights; every horizon must be whole steps of it."""
    if model not in MODEL_PRESETS:
        d = Path(model)
        if not d.is_dir():
            raise CheckpointError(
                f"model {model!r}: no such checkpoint directory, and not a preset "
                f"({', '.join(MODEL_PRESETS)})"
            )
        missing = [f for f in ("config.json", "model.safetensors") if not (d / f).is_file()]
        if missing:
            raise CheckpointError(f"{d}: checkpoint is missing {', '.join(missing)}")
    config = source_config(model)
    f = config.frames_per_step
    bad = [h for h in horizons if h <= 0 or h % f]
    if bad:
        raise ConfigError(
            f"horizons: {bad} are not positive multiples of {f}, the frames per "
            f"step (frames_per_step) of model {model!r}; valid: {f}, {2 * f}, ..."
        )
    return config


def check_manifest_scenes(table: pa.Table, horizons: list[int], source: str) -> int:
    """Every task's horizon is in the job and every scene has ground truth for it; returns the
    number of distinct scenes."""
    rows = table.to_pylist()
    stray = sorted({r["horizon"] for r in rows} - set(horizons))
    if stray:
        raise BadInputError(
            f"{source}: tasks with horizon(s) {stray} are not in the job's horizons {horizons}"
        )
    needed: dict[tuple[str, str], tuple[int, int]] = {}
    for i, r in enumerate(rows):
        key = (r["scene_source"], r["scene_ref"])
        end = r["start_frame"] + r["horizon"]
        if end > needed.get(key, (0, -1))[0]:
            needed[key] = (end, i)
    for (src, ref), (end, row) in needed.items():
        length = _scene_length(src, ref, f"{source} row {row}")
        if end > length:
            raise BadInputError(
                f"{source} row {row}: start_frame + horizon = {end} goes beyond the {length} "
                f"recorded frames of scene {ref!r}; no ground truth for that horizon"
            )
    return len(needed)


def _scene_length(source: str, ref: str, where: str) -> int:
    if source == "procedural":
        spec = parse_procedural_ref(ref)
        spec.validate()
        return spec.frames
    from scenes.lmdrive import open_route

    try:
        return len(open_route(ref))
    except SceneFormatError as e:
        raise SceneFormatError(f"{where}: {e}") from None


def check_lmdrive_recipe(recipe: LMDriveRecipe, horizons: list[int]) -> int:
    from scenes.lmdrive import open_root

    scenes = open_root(recipe.root, instruction_dict=recipe.instruction_dict)
    names = {s.root.name for s in scenes}
    missing = [r for r in recipe.routes or [] if r not in names]
    if missing:
        raise BadInputError(f"{recipe.root}: route(s) {missing} are not in dataset_index.txt")
    longest = max(len(s) for s in scenes)
    if recipe.seed_frames + max(horizons) > longest:
        raise BadInputError(
            f"{recipe.root}: the longest route has {longest} frames; horizon {max(horizons)} "
            f"with {recipe.seed_frames} seed frames needs {recipe.seed_frames + max(horizons)}"
        )
    return len(scenes)


def check_job(path: str | Path) -> JobCheck:
    """Validate everything a job refers to; raise the first problem as a clear error."""
    job = load_job(path)
    job.sampler.over(check_model(job.model, job.horizons).sampler)
    m = job.manifest
    if m.path is not None:
        table = read_manifest(m.path)
        return JobCheck(job, len(table), check_manifest_scenes(table, job.horizons, m.path))
    if isinstance(m.build, LMDriveRecipe):
        return JobCheck(job, None, check_lmdrive_recipe(m.build, job.horizons))
    return JobCheck(job, None, len(m.build.towns) * len(m.build.weathers) * m.build.routes_per_town)
