"""Shared fixtures: short procedural drives, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# One intra-op thread for the whole session, set before any torch work: CPU kernels give slightly
# different bits under different thread counts (and remember the first count they ran with), and
# the pipeline tests compare shards byte for byte. It also keeps timings steady on a shared machine.
torch.set_num_threads(1)

from scenes.procedural.drive import DriveSpec, ProceduralScene  # noqa: E402


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


@pytest.fixture(scope="session")
def model():
    """The ``tiny`` model with seeded random weights, in eval mode."""
    from lmgendrive.checkpoint import build_untrained

    return build_untrained("tiny").eval()


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    """A directory with seeded random Inception and I3D weight files in the reference formats."""
    from qa_weights import write_i3d_weights, write_inception_weights

    d = tmp_path_factory.mktemp("weights")
    write_inception_weights(d)
    write_i3d_weights(d)
    return d
