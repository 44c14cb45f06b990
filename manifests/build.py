"""Building task manifests: seed points of recorded drives x horizons.

A task is one seed point (scene, start frame), the instruction given there and a horizon. Seed
points leave room for the longest horizon, so QA always has the recorded future as ground truth.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable

import numpy as np
import pyarrow as pa

from scenes.procedural.drive import DriveSpec, ProceduralScene
from scenes.registry import procedural_ref
from schemas.errors import BadInputError
from schemas.job import LMDriveRecipe, ProceduralRecipe
from schemas.scene import Instruction, Measurements, Scene
from schemas.spec import validate
from schemas.tables import TASK

log = logging.getLogger(__name__)

PEDESTRIAN_RANGE = 30.0


def task_id(row: dict) -> str:
    """Stable id: a hash of what the task asks for (rebuilding gives the same ids)."""
    content = {
        k: row[k]
        for k in (
            "scene_source",
            "scene_ref",
            "start_frame",
            "seed_frames",
            "horizon",
            "samples",
            "instruction",
            "instruction_id",
            "instruction_args",
            "misleading",
        )
    }
    return "t" + hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]


def task_seed(base: int, tid: str) -> int:
    """The sampling seed of a task's sample 0, from the recipe's base seed and the task id."""
    return int(hashlib.sha256(f"{base}:{tid}".encode()).hexdigest()[:8], 16)


def finish_row(row: dict, base_seed: int) -> dict:
    """Fill ``task_id`` and ``seed`` of a row whose content fields are set."""
    row["task_id"] = task_id(row)
    row["seed"] = task_seed(base_seed, row["task_id"])
    return row


def seed_point_rows(
    scene: Scene,
    source: str,
    ref: str,
    horizons: list[int],
    seed_frames: int,
    stride: int,
    samples: int,
    base_seed: int,
) -> list[dict]:
    """One row per (seed point, horizon) of ``scene``."""
    rows = []
    last_start = len(scene) - max(horizons)
    for start in range(seed_frames, last_start + 1, stride):
        m = scene.measurements(start - 1)
        options = scene.junction_ahead(start - 1) if isinstance(scene, ProceduralScene) else None
        base = {
            "schema_version": TASK.version,
            "scene": scene.name,
            "scene_source": source,
            "scene_ref": ref,
            "start_frame": start,
            "seed_frames": seed_frames,
            "samples": samples,
            **instruction_fields(m.instruction),
            "counterfactual": False,
            "recorded_instruction": m.instruction.text,
            **scene_tags(scene, m),
            "junction": bool(m.is_junction or options is not None),
            "junction_options": list(options or []),
        }
        rows += [finish_row({**base, "horizon": h}, base_seed) for h in horizons]
    return rows


def instruction_fields(ins: Instruction) -> dict:
    return {
        "instruction": ins.text,
        "instruction_id": ins.instruction_id,
        "category": ins.category,
        "instruction_args": json.dumps(ins.args, sort_keys=True),
        "misleading": ins.misleading,
    }


def scene_tags(scene: Scene, m: Measurements) -> dict:
    peds = [
        o
        for o in m.objects
        if o.cls == "pedestrian" and 0 < o.x < PEDESTRIAN_RANGE and abs(o.y) < 8
    ]
    return {
        "weather": m.weather,
        "night": bool(scene.tags.get("night", "night" in m.weather.lower())),
        "pedestrians": bool(peds),
        "red_light": m.light_state == "red",
        "speed": float(m.speed),
    }


def build_procedural(
    recipe: ProceduralRecipe, horizons: list[int], progress: Callable[[int], None] | None = None
) -> pa.Table:
    """Tasks over the drives of a procedural recipe."""
    drives = ((ProceduralScene(s), procedural_ref(s)) for s in procedural_drives(recipe))
    rows = _recipe_rows(drives, "procedural", recipe, horizons, progress)
    return _table(rows, "procedural recipe")


def procedural_drives(recipe: ProceduralRecipe) -> list[DriveSpec]:
    return [
        DriveSpec(town, recipe.route_seed + r, weather, recipe.frames, (recipe.size, recipe.size))
        for town in recipe.towns
        for weather in recipe.weathers
        for r in range(recipe.routes_per_town)
    ]


def build_lmdrive(
    recipe: LMDriveRecipe, horizons: list[int], progress: Callable[[int], None] | None = None
) -> pa.Table:
    """Tasks over the routes of an LMDrive-format dataset root."""
    from scenes.lmdrive import open_root

    scenes = open_root(recipe.root, instruction_dict=recipe.instruction_dict)
    if recipe.routes is not None:
        by_name = {s.root.name: s for s in scenes}
        missing = [r for r in recipe.routes if r not in by_name]
        if missing:
            raise BadInputError(f"{recipe.root}: route(s) {missing} are not in dataset_index.txt")
        scenes = [by_name[r] for r in recipe.routes]
    routes = ((scene, str(scene.root)) for scene in scenes)
    return _table(_recipe_rows(routes, "lmdrive", recipe, horizons, progress), str(recipe.root))


def _recipe_rows(
    scenes: Iterable[tuple[Scene, str]],
    source: str,
    recipe: ProceduralRecipe | LMDriveRecipe,
    horizons: list[int],
    progress: Callable[[int], None] | None,
) -> list[dict]:
    """The seed-point rows of every (scene, reference) a recipe names, one progress tick each."""
    rows: list[dict] = []
    for scene, ref in scenes:
        rows += seed_point_rows(
            scene,
            source,
            ref,
            horizons,
            recipe.seed_frames,
            recipe.stride,
            recipe.samples_per_task,
            recipe.seed,
        )
        if progress:
            progress(1)
    return rows


def build(
    recipe: ProceduralRecipe | LMDriveRecipe,
    horizons: Iterable[int],
    progress: Callable[[int], None] | None = None,
) -> pa.Table:
    """Tasks for ``recipe`` at every horizon."""
    horizons = sorted(set(horizons))
    if isinstance(recipe, ProceduralRecipe):
        return build_procedural(recipe, horizons, progress)
    return build_lmdrive(recipe, horizons, progress)


def count_sources(recipe: ProceduralRecipe | LMDriveRecipe) -> int | None:
    """How many drives a recipe reads (for progress bars), when known without reading them."""
    return len(procedural_drives(recipe)) if isinstance(recipe, ProceduralRecipe) else None


def _table(rows: list[dict], source: str) -> pa.Table:
    if not rows:
        raise BadInputError(
            f"{source}: no seed point leaves room for the seed frames and the longest horizon"
        )
    table = pa.Table.from_pylist(rows, schema=TASK.arrow)
    log.info(
        "%s: %d tasks from %d seed points",
        source,
        len(rows),
        len(np.unique([r["scene"] + str(r["start_frame"]) for r in rows])),
    )
    return validate(table, TASK, source)
