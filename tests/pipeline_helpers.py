"""Small jobs for the pipeline tests: the tiny model on a short procedural drive."""

from __future__ import annotations

from pathlib import Path

import yaml

from schemas.job import JobSpec, parse_job

# the seed scenes of every tiny job: one short procedural drive
TINY_BUILD = {
    "source": "procedural",
    "towns": [3],
    "frames": 40,
    "size": 64,
    "stride": 10,
    "seed_frames": 4,
}


def tiny_job(output: str, **overrides) -> JobSpec:
    data = {
        "name": "tiny",
        "model": "tiny",
        "manifest": {"build": dict(TINY_BUILD)},
        "output": output,
        "horizons": [8, 16],
        "sampler": {"scheduler": "ddim", "steps": 2},
        "sharding": {"samples_per_shard": 2},
        "resources": {"max_retries": 1},
    }
    for key, value in overrides.items():
        data[key] = value
    return parse_job(data)


def write_job(path: Path, job: JobSpec) -> Path:
    path.write_text(yaml.safe_dump(job.model_dump(mode="json", exclude_none=True)))
    return path
