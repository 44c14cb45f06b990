"""Whether a job may write into its output location, and what ``--overwrite`` may remove.

A location belongs to a job when it is empty (or absent) or holds a ``job.yaml`` and nothing a job
does not write. ``--overwrite`` removes only the entries a job writes (:data:`JOB_ENTRIES`) and
refuses a location holding anything else, locally and on S3. A rerun resumes when the previous
spec differs from this one only in keys that cannot change a sample (:data:`SAMPLE_KEYS` are the
ones that can); otherwise the message names the keys that differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from schemas.errors import BadInputError
from schemas.user_yaml import parse_yaml
from storage.atomic import PARTIAL_SUFFIX
from storage.store import Storage

JOB_FILE = "job.yaml"
JOB_ENTRIES = (
    JOB_FILE,
    "manifest.parquet",
    "shards",
    "_done",
    "index.parquet",
    "stats.json",
    "qa",
)
# what a sample is made of; resources, storage, QA, the job's name and output spelling are not
SAMPLE_KEYS = ("model", "model_sha256", "manifest", "horizons", "sampler", "sharding", "encoding")
MAX_SHOWN = 5


@dataclass(frozen=True)
class Location:
    """An output location checked for a job: ``new`` (empty), ``resume`` (this job's output, or
    one differing only in keys that do not change a sample) or ``replace`` (``--overwrite``)."""

    storage: Storage
    state: Literal["new", "resume", "replace"]
    previous: dict | None  # the job.yaml found there


def written_by_job(name: str) -> bool:
    """Whether a top-level entry of an output is one a job writes (or is writing)."""
    return name.removesuffix(PARTIAL_SUFFIX) in JOB_ENTRIES


def _entries_text(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_SHOWN])
    return shown + (f" and {len(names) - MAX_SHOWN} more" if len(names) > MAX_SHOWN else "")


def check_location(storage: Storage, spec: dict, overwrite: bool) -> Location:
    """Check ``storage`` for a job whose resolved spec is ``spec``; writes nothing."""
    storage.check()
    names = sorted(storage.top_level())
    if not names:
        return Location(storage, "new", None)
    foreign = [n for n in names if not written_by_job(n)]
    if foreign or JOB_FILE not in names:
        what = (
            f"holds {_entries_text(foreign)}, which no job writes"
            if foreign
            else f"holds {_entries_text(names)} but no {JOB_FILE}, so it is not a job's output"
        )
        rule = (
            f"--overwrite removes only what a job writes ({', '.join(JOB_ENTRIES)}) and so "
            f"leaves this location alone"
            if overwrite
            else "a job writes only into an empty location or its own output"
        )
        raise BadInputError(f"{storage.uri} {what}; {rule}. Choose another output")
    previous = _previous_spec(storage)
    if overwrite:
        return Location(storage, "replace", previous)
    differ = sample_differences(previous, spec)
    if differ:
        shown = "; ".join(differ[:MAX_SHOWN]) + ("; ..." if len(differ) > MAX_SHOWN else "")
        raise BadInputError(
            f"{storage.uri} holds the output of a job that makes different samples "
            f"({len(differ)} key(s) differ: {shown}); rerun with --overwrite to replace it, or "
            f"choose another output"
        )
    return Location(storage, "resume", previous)


def _previous_spec(storage: Storage) -> dict:
    url = storage.url(JOB_FILE)
    data = parse_yaml(storage.get_bytes(JOB_FILE), url)
    if not isinstance(data, dict) or not {"name", "model", "manifest"} <= set(data):
        raise BadInputError(
            f"{url} is not a job spec written by lmgd, so this location is not a job's output; "
            f"choose another output"
        )
    return data


def _flat(data: object, prefix: str = "") -> dict[str, object]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, object] = {}
    for k, v in data.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def sample_differences(previous: dict, spec: dict) -> list[str]:
    """``key: output has A, this job B`` for each key under :data:`SAMPLE_KEYS` that differs."""
    old = _flat({k: previous.get(k) for k in SAMPLE_KEYS})
    new = _flat({k: spec.get(k) for k in SAMPLE_KEYS})
    return [
        f"{k}: output has {old.get(k)!r}, this job {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
