"""Pre-flight: every check a job must pass before a byte goes to its output, in one code path
that ``lmgd generate`` runs first and ``lmgd job validate`` runs alone.

The spec; the model reference, the sampler the job resolves to over the checkpoint's, and the
checkpoint's weights (sha256, tensor names and shapes, without reading them); the manifest (built
in memory, or the output's own on resume) with its rows and scenes; the output location (whose it
is, and whether this job may resume it). Only whether the cluster can hold the workers is left to
``generate``, which checks it when it attaches, still before writing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lmgendrive.checkpoint import check_checkpoint
from lmgendrive.checkpoint_meta import source_config
from lmgendrive.config import ModelConfig
from manifests.build import build
from manifests.curate import curate
from manifests.io import read_manifest
from pipeline.output_location import Location, check_location
from scenes.registry import parse_procedural_ref
from schemas.errors import BadInputError, CheckpointError, ConfigError, SceneFormatError
from schemas.job import MODEL_PRESETS, JobSpec, LMDriveRecipe, load_job
from schemas.sampler import SamplerOverride
from schemas.spec import validate
from schemas.tables import TASK
from schemas.units import Unit, make_units
from storage.store import Storage, open_storage


@dataclass(frozen=True)
class Preflight:
    """A job that passed every check, with what the checks found."""

    job: JobSpec  # resolved: every sampler key set (:func:`resolve_job`)
    location: Location
    manifest: pa.Table
    scenes: int
    units: list[Unit]
    done: set[str]  # units already complete in the output

    @property
    def pending(self) -> list[Unit]:
        return [u for u in self.units if u.name not in self.done]


def preflight(
    job: JobSpec, overwrite: bool = False, progress: Callable[[], None] | None = None
) -> Preflight:
    """Check ``job`` as ``lmgd generate`` (with ``--overwrite`` or not) will run it; writes
    nothing; the first problem raises a clear error."""
    job = resolve_job(job)
    storage = open_storage(job.output, job.storage.endpoint_url, job.storage.region)
    location = check_location(storage, job.model_dump(mode="json"), overwrite)
    resumed = location.state == "resume" and storage.exists("manifest.parquet")
    if resumed:
        table = validate(
            pq.read_table(pa.BufferReader(storage.get_bytes("manifest.parquet"))),
            TASK,
            storage.url("manifest.parquet"),
        )
        source = storage.url("manifest.parquet")
    else:
        table, source = _manifest(job, progress)
    scenes = check_manifest_scenes(table, job.horizons, source)
    units = make_units(table, job.sharding.samples_per_shard)
    done = done_units(storage, units) if location.state == "resume" else set()
    return Preflight(job, location, table, scenes, units, done)


def check_job(path: str | Path) -> Preflight:
    """``lmgd job validate``: :func:`preflight` of the job spec at ``path``."""
    return preflight(load_job(path))


def resolve_job(job: JobSpec) -> JobSpec:
    """``job`` checked against its checkpoint (:func:`check_checkpoint`, without loading weights),
    with every sampler key set (its own values over those of the checkpoint's sampler) and
    ``model_sha256`` the checkpoint's weights (``None`` for presets built in code). What the
    workers run, and what ``job.yaml`` and every sample's metadata record. A pinned
    ``model_sha256`` that the checkpoint does not hold is refused."""
    sampler = job.sampler.over(check_model(job.model, job.horizons).sampler, f"{job.name}: sampler")
    sha = check_checkpoint(job.model)
    if job.model_sha256 is not None and job.model_sha256 != sha:
        raise CheckpointError(
            f"{job.name}: model_sha256 pins the weights {job.model_sha256}, but model "
            f"{job.model!r} holds {sha or 'weights built in code (a preset)'}; point model at the "
            f"pinned checkpoint, or remove model_sha256"
        )
    return job.model_copy(
        update={"sampler": SamplerOverride(**sampler.model_dump()), "model_sha256": sha}
    )


def _manifest(job: JobSpec, progress) -> tuple[pa.Table, str]:
    """The job's manifest, read or built, and curated; with where its rows come from."""
    m = job.manifest
    if m.path is not None:
        table, source = read_manifest(m.path), m.path
        keep = pc.is_in(table.column("horizon"), pa.array(job.horizons, pa.int32()))
        table = table.filter(keep)
        if len(table) == 0:
            raise BadInputError(f"{m.path}: no task has one of the job's horizons {job.horizons}")
    else:
        if isinstance(m.build, LMDriveRecipe):
            check_lmdrive_recipe(m.build, job.horizons)
        table, source = build(m.build, job.horizons, progress), "manifest.build"
    if m.curate is not None:
        table, source = curate(table, m.curate), f"{source} (curated)"
        if len(table) == 0:
            raise BadInputError("manifest.curate: the curation left no task; loosen it")
    return table, source


def done_units(storage: Storage, units: list[Unit]) -> set[str]:
    """Units whose marker exists and describes the same samples; a marker that cannot be read is
    a unit to redo."""
    by_name = {u.name: u for u in units}
    done = set()
    for key in storage.list("_done/"):
        name = Path(key).stem
        try:
            marker = json.loads(storage.get_bytes(key))
            fingerprint = marker.get("fingerprint")
        except (ValueError, AttributeError):
            continue  # damaged: the unit runs again and its marker is rewritten
        unit = by_name.get(name)
        if unit is None or fingerprint != unit.fingerprint:
            raise BadInputError(
                f"{storage.url(key)}: completion marker of a different unit; the output holds "
                f"another job's results (use --overwrite)"
            )
        done.add(name)
    return done


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
    """Every task's horizon is in the job, every scene has ground truth for it, and the seed
    frames of recorded scenes are readable images (headers only); returns the number of distinct
    scenes."""
    rows = table.to_pylist()
    if not rows:
        raise BadInputError(f"{source}: the manifest holds no task")
    stray = sorted({r["horizon"] for r in rows} - set(horizons))
    if stray:
        raise BadInputError(
            f"{source}: tasks with horizon(s) {stray} are not in the job's horizons {horizons}"
        )
    needed: dict[tuple[str, str], tuple[int, int]] = {}
    seeds: dict[tuple[str, str], set[int]] = {}
    for i, r in enumerate(rows):
        key = (r["scene_source"], r["scene_ref"])
        end = r["start_frame"] + r["horizon"]
        if end > needed.get(key, (0, -1))[0]:
            needed[key] = (end, i)
        seeds.setdefault(key, set()).update(
            range(r["start_frame"] - r["seed_frames"], r["start_frame"])
        )
    for (src, ref), (end, row) in needed.items():
        where = f"{source} row {row}"
        length = _check_scene(src, ref, seeds[src, ref], where)
        if end > length:
            raise BadInputError(
                f"{where}: start_frame + horizon = {end} goes beyond the {length} "
                f"recorded frames of scene {ref!r}; no ground truth for that horizon"
            )
    return len(needed)


def _check_scene(source: str, ref: str, seed_frames: set[int], where: str) -> int:
    """The number of frames of a scene; a recorded one's seed frames are checked too."""
    if source == "procedural":
        spec = parse_procedural_ref(ref)
        spec.validate()
        return spec.frames
    from scenes.lmdrive import open_route

    try:
        scene = open_route(ref)
        scene.check_frames(f for f in seed_frames if f < len(scene))
    except SceneFormatError as e:
        raise SceneFormatError(f"{where}: {e}") from None
    return len(scene)


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
