"""``lmgd inspect``: what a job output holds, and whether it is whole.

A finished, intact output (every marker readable, every shard matching its marker, the index
readable) gives counts by horizon, category and shard. An interrupted or damaged one gives what is
there, counted from the index or else from the completion markers, and raises
:class:`RunFailure` naming every file at fault and how to mend it; a place holding nothing of a job
output is a :class:`BadInputError`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import PurePosixPath

from schemas.errors import BadInputError, LmgdError, RunFailure
from storage.read import DamagedOutput, read_index, read_marker, shard_keys, verified_raw
from storage.store import Storage

RESUME = (
    "`lmgd generate JOB` resumes the run: it skips the units whose marker is there, generates "
    "the others and writes index.parquet"
)


def report(storage: Storage) -> str:
    """Counts and the shards verified against their markers; raises :class:`RunFailure` listing
    every problem."""
    marker_keys, shards = storage.list("_done/"), shard_keys(storage)
    if not (marker_keys or shards or any(map(storage.exists, ("index.parquet", "job.yaml")))):
        raise BadInputError(
            f"{storage.uri}: not a job output (none of job.yaml, index.parquet, shards/*.tar, "
            "_done/*.json is there); give the output folder or s3:// prefix of a job"
        )
    index, index_problem = _index_rows(storage)
    markers, problems = _markers(storage, marker_keys)
    checked = {key: _shard_problem(storage, key, m, shards) for key, m in markers.items()}
    problems = [p for p in (index_problem, *problems, *checked.values()) if p]
    problems += _unmarked(storage, shards, marker_keys)
    rows = index if index is not None else [r for m in markers.values() for r in m["samples"]]
    source = "" if index is not None else " (from the completion markers)"
    lines = [
        f"{storage.uri}: {len(rows)} samples in {len({r['shard'] for r in rows})} shards{source}",
        f"{len(markers)} unit(s) done (completion markers), {len(shards)} shard file(s)",
        *_tables(rows),
        "",
    ]
    if not problems:
        return "\n".join(
            [*lines, f"verified {len(markers)} shard(s) against their markers: all match"]
        )
    intact = [markers[key] for key, problem in checked.items() if problem is None]
    lines += [
        f"verified {len(intact)} of {len(markers)} shard(s) against their markers "
        f"({sum(len(m['samples']) for m in intact)} samples intact)",
        "",
        f"{len(problems)} problem(s):",
        *problems,
        "",
        RESUME,
    ]
    raise RunFailure("\n".join(lines))


def _index_rows(storage: Storage) -> tuple[list[dict] | None, str | None]:
    """The index rows, or None and the problem when the index is missing or unreadable."""
    if not storage.exists("index.parquet"):
        return None, (
            f"{storage.url('index.parquet')}: missing (the run stopped before writing it; "
            "counted from the completion markers)"
        )
    try:
        return read_index(storage).to_pylist(), None
    except LmgdError as e:
        return None, f"{e} (counted from the completion markers instead)"


def _markers(storage: Storage, keys: list[str]) -> tuple[dict[str, dict], list[str]]:
    """The readable completion markers by key, and a problem per other one."""
    markers, problems = {}, []
    for key in keys:
        try:
            markers[key] = read_marker(storage, key)
        except DamagedOutput as e:
            problems.append(f"{e}; delete it to have its unit redone")
    return markers, problems


def _shard_problem(storage: Storage, key: str, marker: dict, shards: list[str]) -> str | None:
    """What is wrong with the shard of marker ``key``, or None when it matches the marker."""
    shard, url = marker["shard"], storage.url(marker["shard"])
    if shard not in shards:
        return (
            f"{url}: missing, but its marker says it is done; delete {storage.url(key)} to have "
            "its unit redone"
        )
    redo = f"delete it and {storage.url(key)} to have its unit redone"
    data = storage.get_bytes(shard)
    if hashlib.sha256(data).hexdigest() != marker["sha256"]:
        return (
            f"{url}: sha256 differs from its marker (corrupt, truncated or replaced; "
            f"{_size(len(data), marker)}); {redo}"
        )
    listed = {s["key"]: s["content_sha256"] for s in marker["samples"]}
    try:
        keys = [raw["__key__"] for raw in verified_raw(storage, shard, listed)]
    except DamagedOutput as e:
        return f"{e}; {redo}"
    if keys != list(listed):
        return f"{url}: holds samples {keys}, its marker lists {list(listed)}; {redo}"
    return None


def _size(n: int, marker: dict) -> str:
    expected = marker.get("bytes")
    return f"{n} bytes" + ("" if expected in (None, n) else f", its marker says {expected}")


def _unmarked(storage: Storage, shards: list[str], marker_keys: list[str]) -> list[str]:
    """A problem per shard whose unit has no marker file."""
    units = {PurePosixPath(k).stem for k in marker_keys}
    return [
        f"{storage.url(key)}: no completion marker (unit unfinished; a rerun redoes it)"
        for key in shards
        if PurePosixPath(key).stem not in units
    ]


def _tables(rows: list[dict]) -> list[str]:
    """The sample counts by horizon, category and shard."""
    lines = []
    for key in ("horizon", "category", "shard"):
        counter = Counter(r[key] for r in rows)
        lines += ["", f"{key}", "-" * max(len(key), 8)]
        lines += [
            f"{k!s:<28} {counter[k]:>6}"
            for k in sorted(counter, key=lambda k: (isinstance(k, str), k))
        ]
    return lines
