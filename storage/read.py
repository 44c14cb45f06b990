"""Reading a job's output back: samples as arrays plus metadata, from a local or S3 output.

Shards are plain WebDataset tars, so a training loop needs none of this module::

    import io, json, decord, webdataset as wds
    for s in wds.WebDataset("out/demo/shards/unit-{000000..000009}.tar", shardshuffle=False):
        meta = json.loads(s["json"])
        front = decord.VideoReader(io.BytesIO(s["front.mp4"])).get_batch(
            range(meta["horizon"])
        ).asnumpy()

This module adds S3 streaming, decoding of every member and the views x frames layout, and reads
completion markers and the index; a file that cannot be read, or differs from what its marker or the
index records, raises :class:`DamagedOutput` naming it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from webdataset.tariterators import group_by_keys, tar_file_expander

from schemas.errors import BadInputError, RunFailure, SchemaError
from schemas.spec import validate
from schemas.tables import INDEX
from storage.media import decode_mp4, decode_png, load_npy
from storage.shards import content_hash
from storage.store import Storage, open_storage

MARKER_FIELDS = {"shard": str, "sha256": str, "samples": list}


class DamagedOutput(RunFailure):
    """A file of a job output that cannot be read, or differs from what its marker or the index
    says (truncated, corrupt, replaced); the message names it."""


@dataclass
class Sample:
    key: str
    meta: dict
    frames: np.ndarray  # (V, T, H, W, 3) uint8, views in meta["views"] order
    seed_frames: np.ndarray  # (V, S, H, W, 3) uint8
    waypoints: np.ndarray  # (steps, 4, 2)
    controls: np.ndarray  # (steps, 3) throttle, brake, steer
    completion: np.ndarray  # (steps,)


def read_index(storage: Storage) -> pa.Table:
    """``index.parquet``, validated; raises :class:`DamagedOutput` when it cannot be read."""
    if not storage.exists("index.parquet"):
        raise BadInputError(f"{storage.url('index.parquet')}: not found ({_why_no_index(storage)})")
    with _damage_named(storage.url("index.parquet"), "not a readable Parquet file"):
        table = pq.read_table(pa.BufferReader(storage.get_bytes("index.parquet")))
    return validate(table, INDEX, storage.url("index.parquet"))


def _why_no_index(storage: Storage) -> str:
    done = len(storage.list("_done/"))
    if not done:
        return "is this a job output?"
    return f"the run stopped before writing it, {done} unit(s) done; `lmgd generate JOB` resumes it"


def read_marker(storage: Storage, key: str) -> dict:
    """The completion marker ``key`` (``_done/<unit>.json``) with its samples as index rows;
    raises :class:`DamagedOutput` naming it when it is not one."""
    url = storage.url(key)
    with _damage_named(url, "not JSON"):
        marker = json.loads(storage.get_bytes(key))
    wrong = _wrong_fields(marker)
    if wrong:
        raise DamagedOutput(f"{url}: not a completion marker (no valid {', '.join(wrong)})")
    with _damage_named(url, "samples do not fit the index schema"):
        table = pa.Table.from_pylist(marker["samples"], schema=INDEX.arrow)
    try:
        return {**marker, "samples": validate(table, INDEX, url).to_pylist()}
    except SchemaError as e:
        raise DamagedOutput(str(e)) from None


def _wrong_fields(marker) -> list[str]:
    """The fields of ``MARKER_FIELDS`` that ``marker`` lacks or holds in another type."""
    if not isinstance(marker, dict):
        return list(MARKER_FIELDS)
    wrong = [k for k, kind in MARKER_FIELDS.items() if not isinstance(marker.get(k), kind)]
    if "samples" not in wrong and not all(isinstance(r, dict) for r in marker["samples"]):
        wrong.append("samples")
    return wrong


def shard_keys(storage: Storage) -> list[str]:
    return [k for k in storage.list("shards/") if k.endswith(".tar")]


def _streams(storage: Storage, keys: list[str]) -> Iterator[dict]:
    for key in keys:
        stream = storage.open_stream(key)
        try:
            yield {"url": storage.url(key), "stream": stream}
        finally:
            stream.close()


def raw_samples(storage: Storage, keys: list[str] | None = None) -> Iterator[dict]:
    """WebDataset samples (member name -> bytes, plus ``__key__``) of the given shards."""
    return group_by_keys(
        tar_file_expander(_streams(storage, shard_keys(storage) if keys is None else keys))
    )


def verified_raw(storage: Storage, key: str, wanted: dict[str, str]) -> Iterator[dict]:
    """The raw samples of shard ``key``; each one named in ``wanted`` (key -> content sha256, as
    the index or a marker lists it) must be there with that content. Raises
    :class:`DamagedOutput` naming the shard when it cannot be read or does not hold them."""
    url, seen = storage.url(key), set()
    with _damage_named(url, "cannot be read"):
        for raw in raw_samples(storage, [key]):
            name = raw["__key__"]
            members = {k: v for k, v in raw.items() if not k.startswith("__")}
            if name in wanted and content_hash(members) != wanted[name]:
                raise DamagedOutput(
                    f"{url}: sample {name} differs from its listed sha256 (corrupt)"
                )
            seen.add(name)
            yield raw
    missing = sorted(set(wanted) - seen)
    if missing:
        raise DamagedOutput(
            f"{url}: lacks {len(missing)} listed sample(s) {missing[:5]} (truncated or replaced)"
        )


@contextmanager
def _damage_named(url: str, what: str) -> Iterator[None]:
    """Errors reading ``url`` as one :class:`DamagedOutput` naming it and the cause."""
    try:
        yield
    except DamagedOutput:
        raise
    except Exception as e:
        raise DamagedOutput(f"{url}: {what} ({type(e).__name__}: {_cause(e)})") from None


def _cause(e: Exception) -> str:
    """The first line of an error's message, without the stream webdataset adds to it."""
    text = str(e)
    if text.startswith("(") and e.args and isinstance(e.args[0], str):
        text = e.args[0]  # webdataset appends the stream and the url to the arguments
    return (text.split(" @ <")[0].splitlines() or [""])[0][:300]


def decode_sample(raw: dict) -> Sample:
    """A raw sample decoded; raises :class:`DamagedOutput` naming it when a member will not
    decode."""
    with _damage_named(f"{raw['__url__']} sample {raw['__key__']}", "cannot be decoded"):
        return _decode(raw)


def _decode(raw: dict) -> Sample:
    meta = json.loads(raw["json"])
    views = meta["views"]

    def stack(prefix: str) -> np.ndarray:
        if f"{prefix}{views[0]}.mp4" in raw:
            return np.stack([decode_mp4(raw[f"{prefix}{v}.mp4"]) for v in views])
        frames = []
        for v in views:
            names = sorted(k for k in raw if k.startswith(f"{prefix}{v}.") and k.endswith(".png"))
            frames.append(np.stack([decode_png(raw[n]) for n in names]))
        return np.stack(frames)

    return Sample(
        key=raw["__key__"],
        meta=meta,
        frames=stack(""),
        seed_frames=stack("seed_"),
        waypoints=load_npy(raw["waypoints.npy"]),
        controls=load_npy(raw["controls.npy"]),
        completion=load_npy(raw["completion.npy"]),
    )


def iter_samples(
    output: str, endpoint_url: str | None = None, region: str | None = None
) -> Iterator[Sample]:
    """Every sample of a job output (local directory or ``s3://bucket/prefix``), decoded."""
    storage = open_storage(output, endpoint_url, region)
    for raw in raw_samples(storage):
        yield decode_sample(raw)
