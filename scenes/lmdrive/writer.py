"""Writing any contract scene as an LMDrive-format route folder, and a dataset root's index.

Deterministic: the same scene gives byte-identical files (sorted JSON keys, PNG with fixed
settings); every write goes through :mod:`storage.atomic`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np

from scenes.lmdrive.files import PathLike, count_frames
from scenes.lmdrive.instructions import span_key
from scenes.lmdrive.layout import (
    ACTORS_DIR,
    INDEX_FILE,
    MEASUREMENTS_DIR,
    META_FILE,
    NAV_FILE,
    NOTICE_FILE,
)
from scenes.lmdrive.to_lmdrive import instruction_fields, lmdrive_actors, lmdrive_measurements
from schemas.errors import BadInputError, SceneFormatError
from schemas.scene import Scene
from storage.atomic import atomic_path, write_bytes

log = logging.getLogger(__name__)

PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 3]


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _dumps(obj: object, indent: int | None = 1) -> str:
    return json.dumps(obj, sort_keys=True, indent=indent, default=_json_default)


def _write_json(path: Path, obj: object) -> None:
    path.write_text(_dumps(obj) + "\n", encoding="utf-8")


def _encode_png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), PNG_PARAMS)
    if not ok:
        raise RuntimeError("cv2 could not encode a PNG")
    return buf.tobytes()


def _write_instructions(scene: Scene, out: Path, route_path: str) -> None:
    """Navigation spans as ``navigation_instruction_list.txt``, notices as the JSON file."""
    tags, n = scene.tags, len(scene)
    nav, notices = [], []
    for span in sorted(scene.instructions(), key=span_key):
        rec = instruction_fields(span.instruction)
        rec.update(route_path=route_path, start_frame=span.start_frame, end_frame=span.end_frame)
        if span.instruction.category == "notice":
            notices.append({**rec, "frame_id": span.start_frame})
        else:
            rec.update(
                town_id=tags.get("town_id", -1),
                weather_id=tags.get("weather_id", -1),
                route_frames=n,
            )
            nav.append(rec)
    (out / NAV_FILE).write_text(
        "".join(_dumps(r, indent=None) + "\n" for r in nav), encoding="utf-8"
    )
    _write_json(out / NOTICE_FILE, {route_path: notices})


def _write_frame(scene: Scene, i: int, out: Path) -> None:
    images = scene.images(i)
    h, w = scene.size
    for view in scene.views:
        img = np.asarray(images[view])
        if img.shape != (h, w, 3) or img.dtype != np.uint8:
            raise SceneFormatError(
                f"scene {scene.name!r} frame {i} view {view!r}: image {img.shape} {img.dtype}, "
                f"expected ({h}, {w}, 3) uint8"
            )
        (out / f"rgb_{view}" / f"{i:04d}.png").write_bytes(_encode_png(img))
    m = scene.measurements(i)
    actors, light_id = lmdrive_actors(m)
    _write_json(out / MEASUREMENTS_DIR / f"{i:04d}.json", lmdrive_measurements(m, light_id))
    _write_json(out / ACTORS_DIR / f"{i:04d}.json", actors)


def _write_contents(
    scene: Scene, out: Path, route_name: str, on_frame: Callable[[int], None] | None
) -> None:
    for sub in [f"rgb_{v}" for v in scene.views] + [MEASUREMENTS_DIR, ACTORS_DIR]:
        (out / sub).mkdir(parents=True)
    meta = {
        "name": scene.name,
        "fps": scene.fps,
        "views": list(scene.views),
        "size": list(scene.size),
        "tags": scene.tags,
    }
    _write_json(out / META_FILE, meta)
    for i in range(len(scene)):
        _write_frame(scene, i, out)
        if on_frame is not None:
            on_frame(i)
    _write_instructions(scene, out, f"{route_name}/")


def write_route(
    scene: Scene,
    out_dir: PathLike,
    *,
    overwrite: bool = False,
    on_frame: Callable[[int], None] | None = None,
) -> Path:
    """Export any contract scene as an LMDrive-format route folder; returns ``out_dir``.

    ``on_frame(i)`` is called after each frame is written (for progress bars).

    Written into ``<out_dir>.partial`` and renamed when complete, so a failed write leaves
    nothing. Deterministic: the same scene gives byte-identical files (sorted JSON keys, PNG
    with fixed settings).
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise BadInputError(f"{out}: already exists (pass overwrite=True to replace it)")
    with atomic_path(out, directory=True) as partial:
        _write_contents(scene, partial, out.name, on_frame)
    log.info("wrote %s (%d frames) to %s", scene.name, len(scene), out)
    return out


def write_index(root: PathLike, route_dirs: Iterable[PathLike]) -> Path:
    """Write ``<root>/dataset_index.txt`` for route folders inside ``root``; returns its path.

    ``route_dirs`` are paths as given to :func:`~scenes.lmdrive.scene.open_route` (absolute or
    relative to the current directory). Frame counts are those of each route's ``measurements/``.
    """
    root = Path(root)
    lines = []
    for route_dir in route_dirs:
        route = Path(route_dir)
        try:
            rel = route.resolve().relative_to(root.resolve())
        except ValueError as e:
            raise BadInputError(f"{route}: not inside the dataset root {root}") from e
        n, _ = count_frames(route / MEASUREMENTS_DIR, ("json",))
        lines.append(f"{rel.as_posix()}/ {n}\n")
    return write_bytes(root / INDEX_FILE, "".join(lines).encode("utf-8"))
