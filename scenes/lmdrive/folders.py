"""What a route folder holds (image folders, our scene metadata, its name's tags) and what a
dataset root lists (``dataset_index.txt``), read without decoding any frame."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scenes.lmdrive.files import count_frames, image_size, read_json_object, read_text
from scenes.lmdrive.layout import FULL_DIR, FULL_ORDER, IMAGE_EXTS, META_FILE
from schemas.errors import SceneFormatError


@dataclass(frozen=True)
class Images:
    """Where a route's images live: ``rgb_<view>/`` per view, or all views in ``rgb_full/``."""

    folders: dict[str, Path]
    exts: dict[str, str]
    count: int
    stacked: bool

    def path(self, view: str, i: int) -> Path:
        """The file holding frame ``i`` of ``view``."""
        return self.folders[view] / f"{i:04d}.{self.exts[view]}"


def scan_images(route: Path, views: Sequence[str]) -> Images:
    """Find the image folders and check that every view holds the same frames."""
    folders = {v: route / f"rgb_{v}" for v in views}
    missing = [p for p in folders.values() if not p.is_dir()]
    full = route / FULL_DIR
    if missing and not full.is_dir():
        need = ", ".join(f"{p.name}/" for p in folders.values())
        raise SceneFormatError(f"{missing[0]}: missing view folder (need {need} or {FULL_DIR}/)")
    if missing:
        unknown = [v for v in views if v not in FULL_ORDER]
        if unknown:
            raise SceneFormatError(f"{full}: holds {FULL_ORDER}, not view {unknown[0]!r}")
        n, ext = count_frames(full, IMAGE_EXTS)
        return Images({v: full for v in views}, {v: ext for v in views}, n, stacked=True)
    counts = {v: count_frames(p, IMAGE_EXTS) for v, p in folders.items()}
    if len({n for n, _ in counts.values()}) > 1:
        held = ", ".join(f"rgb_{v}/ {n}" for v, (n, _) in counts.items())
        raise SceneFormatError(f"{route}: view folders hold different frame counts ({held})")
    n = next(iter(counts.values()))[0]
    return Images(folders, {v: ext for v, (_, ext) in counts.items()}, n, stacked=False)


def probe_size(images: Images, views: Sequence[str]) -> tuple[int, int]:
    """(height, width) of one view, from the headers of frame 0."""
    if images.stacked:
        path = images.path(views[0], 0)
        height, width = image_size(path)
        if height % len(FULL_ORDER):
            raise SceneFormatError(
                f"{path}: height {height} is not {len(FULL_ORDER)} stacked views {FULL_ORDER}"
            )
        return height // len(FULL_ORDER), width
    paths = [images.path(v, 0) for v in views]
    size = image_size(paths[0])
    for path in paths[1:]:
        other = image_size(path)
        if other != size:
            raise SceneFormatError(
                f"{path}: image is {other[1]}x{other[0]} pixels, {paths[0]} is {size[1]}x{size[0]}"
            )
    return size


def tags_from_name(name: str) -> dict:
    """Town and weather from an LMDrive route folder name (``routes_town01_short_w3_...``)."""
    tags: dict = {"source": "lmdrive"}
    town, weather = re.search(r"town(\d+)", name), re.search(r"_w(\d+)_", name)
    if town:
        tags["town_id"] = int(town.group(1))
    if weather:
        tags["weather_id"] = int(weather.group(1))
    return tags


def read_meta(route: Path) -> dict:
    """Our ``lmgd_scene.json`` (name, fps, views, size, tags), or {} for recorded data."""
    path = route / META_FILE
    if not path.is_file():
        return {}
    meta = read_json_object(path)
    try:
        return {
            "name": str(meta["name"]),
            "fps": float(meta["fps"]),
            "views": tuple(str(v) for v in meta["views"]),
            "size": (int(meta["size"][0]), int(meta["size"][1])),
            "tags": dict(meta["tags"]),
        }
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise SceneFormatError(f"{path}: bad scene metadata ({e!r})") from e


def read_index(index: Path) -> list[tuple[str, str, int]]:
    """``dataset_index.txt`` -> [(where, route_dir, n_frames)]."""
    if not index.is_file():
        raise SceneFormatError(f"{index}: dataset index not found")
    entries = []
    for n, line in enumerate(read_text(index, errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise SceneFormatError(f"{index}:{n}: expected '<route_dir>/ <n_frames>', got {line!r}")
        entries.append((f"{index}:{n}", parts[0], int(parts[1])))
    return entries
