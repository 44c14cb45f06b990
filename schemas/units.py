"""Work units: deterministic groups of samples, one shard each.

Samples are ordered by horizon (manifest order within a horizon) and cut into units of
``samples_per_shard``; a unit therefore never mixes horizons, so its rollouts run as one batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class SampleRef:
    task: dict
    index: int

    @property
    def key(self) -> str:
        return f"{self.task['task_id']}-s{self.index}"

    @property
    def seed(self) -> int:
        return int(self.task["seed"]) + self.index


@dataclass(frozen=True)
class Unit:
    index: int
    samples: tuple[SampleRef, ...]

    @property
    def name(self) -> str:
        return f"unit-{self.index:06d}"

    @property
    def shard_key(self) -> str:
        return f"shards/{self.name}.tar"

    @property
    def marker_key(self) -> str:
        return f"_done/{self.name}.json"

    @property
    def horizon(self) -> int:
        return int(self.samples[0].task["horizon"])

    @property
    def frames(self) -> int:
        """Frames this unit generates (all views)."""
        return self.horizon * len(self.samples)

    @property
    def fingerprint(self) -> str:
        """Identifies the unit's content, so a marker of another job's unit is never trusted."""
        return hashlib.sha256("\n".join(s.key for s in self.samples).encode()).hexdigest()[:16]


def make_units(manifest: pa.Table, samples_per_shard: int) -> list[Unit]:
    rows = sorted(manifest.to_pylist(), key=lambda r: r["horizon"])  # stable: manifest order kept
    refs = [SampleRef(r, k) for r in rows for k in range(int(r["samples"]))]
    units: list[Unit] = []
    start = 0
    while start < len(refs):
        horizon = refs[start].task["horizon"]
        end = start
        while (
            end < len(refs)
            and end - start < samples_per_shard
            and refs[end].task["horizon"] == horizon
        ):
            end += 1
        units.append(Unit(len(units), tuple(refs[start:end])))
        start = end
    return units
