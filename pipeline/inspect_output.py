"""``lmgd inspect``: what a job output holds, and whether every shard matches its marker."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

from schemas.errors import BadInputError
from storage.read import raw_samples, read_index, shard_keys
from storage.store import Storage


def verify(storage: Storage) -> tuple[list[str], int]:
    """Problems found (empty when all is well) and the number of shards checked."""
    problems = []
    markers = [json.loads(storage.get_bytes(k)) for k in storage.list("_done/")]
    shards = set(shard_keys(storage))
    for m in markers:
        if m["shard"] not in shards:
            problems.append(f"{storage.url(m['shard'])}: missing, but its marker says it is done")
            continue
        data = storage.get_bytes(m["shard"])
        if hashlib.sha256(data).hexdigest() != m["sha256"]:
            problems.append(
                f"{storage.url(m['shard'])}: sha256 differs from its marker (corrupt or replaced)"
            )
            continue
        keys = [s["__key__"] for s in raw_samples(storage, [m["shard"]])]
        if keys != [s["key"] for s in m["samples"]]:
            problems.append(
                f"{storage.url(m['shard'])}: holds samples {keys}, marker lists "
                f"{[s['key'] for s in m['samples']]}"
            )
    for key in sorted(shards - {m["shard"] for m in markers}):
        problems.append(
            f"{storage.url(key)}: no completion marker (unit unfinished; a rerun redoes it)"
        )
    return problems, len(markers)


def report(storage: Storage) -> str:
    """Counts by horizon, category and shard; raises :class:`BadInputError` listing problems."""
    index = read_index(storage).to_pylist()
    problems, checked = verify(storage)
    lines = [f"{storage.uri}: {len(index)} samples in {len({r['shard'] for r in index})} shards"]
    for key in ("horizon", "category", "shard"):
        counter = Counter(r[key] for r in index)
        lines += ["", f"{key}", "-" * max(len(key), 8)]
        lines += [
            f"{k!s:<28} {counter[k]:>6}"
            for k in sorted(counter, key=lambda k: (isinstance(k, str), k))
        ]
    if problems:
        raise BadInputError("\n".join([*lines, "", f"{len(problems)} problem(s):", *problems]))
    lines += ["", f"verified {checked} shard(s) against their markers: all match"]
    return "\n".join(lines)
