"""Shared fixtures: short procedural drives, built once per test session."""

from __future__ import annotations

import pytest

from scenes.procedural.drive import DriveSpec, ProceduralScene


@pytest.fixture(scope="session")
def noon_scene() -> ProceduralScene:
    return ProceduralScene(DriveSpec(town_seed=1, route_seed=3, weather="clear_noon", frames=60))


@pytest.fixture(scope="session")
def scene_factory():
    cache: dict[DriveSpec, ProceduralScene] = {}

    def make(**kw) -> ProceduralScene:
        spec = DriveSpec(**kw)
        if spec not in cache:
            cache[spec] = ProceduralScene(spec)
        return cache[spec]

    return make
