"""Opening a scene from the reference a manifest row stores (``scene_source`` + ``scene_ref``)."""

from __future__ import annotations

import json
from functools import lru_cache

from scenes.procedural.drive import DriveSpec, ProceduralScene
from schemas.errors import SceneFormatError
from schemas.scene import Scene

SOURCES = ("procedural", "lmdrive")


def procedural_ref(spec: DriveSpec) -> str:
    """The manifest reference of a procedural drive: its spec as canonical JSON."""
    return json.dumps(
        {
            "town_seed": spec.town_seed,
            "route_seed": spec.route_seed,
            "weather": spec.weather,
            "frames": spec.frames,
            "size": list(spec.size),
            "turns": list(spec.turns),
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def parse_procedural_ref(ref: str) -> DriveSpec:
    try:
        d = json.loads(ref)
        return DriveSpec(
            town_seed=int(d["town_seed"]),
            route_seed=int(d["route_seed"]),
            weather=str(d["weather"]),
            frames=int(d["frames"]),
            size=tuple(int(v) for v in d["size"]),
            turns=tuple(d.get("turns", ())),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise SceneFormatError(
            f"procedural scene reference {ref!r} is not a drive spec: {e}"
        ) from None


@lru_cache(maxsize=8)
def open_scene(source: str, ref: str) -> Scene:
    """The scene a manifest row refers to (cached: rows of one scene share it)."""
    if source == "procedural":
        spec = parse_procedural_ref(ref)
        spec.validate()
        return ProceduralScene(spec)
    if source == "lmdrive":
        from scenes.lmdrive import open_route

        return open_route(ref)
    raise SceneFormatError(f"unknown scene source {source!r}; valid: {', '.join(SOURCES)}")
