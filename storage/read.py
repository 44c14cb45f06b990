"""Reading a job's output back: samples as arrays plus metadata, from a local or S3 output.

Shards are plain WebDataset tars, so a training loop needs none of this module::

    import io, json, decord, webdataset as wds
    for s in wds.WebDataset("out/demo/shards/unit-{000000..000009}.tar", shardshuffle=False):
        meta = json.loads(s["json"])
        front = decord.VideoReader(io.BytesIO(s["front.mp4"])).get_batch(
            range(meta["horizon"])
        ).asnumpy()

This module adds S3 streaming, decoding of every member and the views x frames layout.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from webdataset.tariterators import group_by_keys, tar_file_expander

from schemas.errors import BadInputError
from schemas.spec import validate
from schemas.tables import INDEX
from storage.media import decode_mp4, decode_png, load_npy
from storage.store import Storage, open_storage


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
    if not storage.exists("index.parquet"):
        raise BadInputError(f"{storage.url('index.parquet')}: not found (is this a job output?)")
    return validate(
        pq.read_table(pa.BufferReader(storage.get_bytes("index.parquet"))),
        INDEX,
        storage.url("index.parquet"),
    )


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


def decode_sample(raw: dict) -> Sample:
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
