"""A work unit's samples as one WebDataset shard (a tar file), byte-reproducible.

Members of a sample ``KEY`` (keys have no dots, as WebDataset splits at the first dot):
``KEY.left.mp4``, ``KEY.front.mp4``, ``KEY.right.mp4`` (generated frames; with PNG encoding
``KEY.left.0000.png`` ... instead), ``KEY.seed_left.mp4`` ... (the seed frames),
``KEY.waypoints.npy`` (steps, 4, 2), ``KEY.controls.npy`` (steps, 3: throttle, brake, steer),
``KEY.completion.npy`` (steps,), and ``KEY.json`` (the sample metadata, schema ``sample``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import webdataset as wds

from schemas.spec import validate
from schemas.tables import SAMPLE
from storage.media import encode_mp4, encode_png, npy_bytes


@dataclass
class GeneratedSample:
    key: str
    frames: np.ndarray  # (V, T, H, W, 3) uint8
    seed_frames: np.ndarray  # (V, S, H, W, 3) uint8
    waypoints: np.ndarray
    controls: np.ndarray
    completion: np.ndarray
    meta: dict


def sample_members(
    s: GeneratedSample, views: tuple[str, ...], fmt: str, crf: int, fps: float
) -> dict[str, bytes]:
    """The members of one sample (without the key prefix), in a fixed order."""
    validate(
        pa.Table.from_pylist([s.meta], schema=SAMPLE.arrow), SAMPLE, f"sample {s.key} metadata"
    )
    members: dict[str, bytes] = {}
    for prefix, stack in (("", s.frames), ("seed_", s.seed_frames)):
        for v, view in enumerate(views):
            if fmt == "mp4":
                members[f"{prefix}{view}.mp4"] = encode_mp4(stack[v], fps=fps, crf=crf)
            else:
                for t, frame in enumerate(stack[v]):
                    members[f"{prefix}{view}.{t:04d}.png"] = encode_png(frame)
    members["waypoints.npy"] = npy_bytes(s.waypoints.astype(np.float32))
    members["controls.npy"] = npy_bytes(s.controls.astype(np.float32))
    members["completion.npy"] = npy_bytes(s.completion.astype(np.float32))
    members["json"] = json.dumps(s.meta, sort_keys=True, indent=1).encode()
    return members


def content_hash(members: dict[str, bytes]) -> str:
    """sha256 over a sample's member names and bytes."""
    h = hashlib.sha256()
    for name in sorted(members):
        h.update(name.encode() + b"\0" + hashlib.sha256(members[name]).digest())
    return h.hexdigest()


def write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> str:
    """Write ``(key, members)`` pairs as a tar with fixed metadata (mtime 0); returns its sha256."""
    with open(path, "wb") as f, wds.TarWriter(f, mtime=0, encoder=False) as sink:
        for key, members in samples:
            sink.write({"__key__": key, **members})
    return hashlib.sha256(path.read_bytes()).hexdigest()
