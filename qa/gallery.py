"""The report's gallery: seed frames and generated futures, one PNG per seed point (paper Figure 4).

A group is every sample generated from one seed point (scene, start frame) at the longest horizon,
so counterfactual instructions at a junction sit one above the other: per instruction a row with the
last seed frame and the generated frames at ``t+8, t+16, t+32, ...`` (doubling up to the horizon),
each the three views side by side. Groups with the most distinct instructions come first.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage.read import decode_sample, raw_samples, read_index
from storage.store import Storage

CAPTION_H = 22
FONT = cv2.FONT_HERSHEY_SIMPLEX
MIN_TILE = 128  # frames are upscaled (nearest) to at least this many pixels high


def pick_groups(index: pa.Table, limit: int) -> list[list[dict]]:
    """Up to ``limit`` groups of index rows (first sample of each task, longest horizon)."""
    rows = [r for r in index.to_pylist() if r["sample_index"] == 0]
    if not rows:
        return []
    longest = max(r["horizon"] for r in rows)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["horizon"] == longest:
            groups[(r["scene"], r["start_frame"])].append(r)
    ranked = sorted(
        groups.values(),
        key=lambda g: (-len({r["instruction"] for r in g}), g[0]["scene"], g[0]["start_frame"]),
    )
    return [
        sorted(g, key=lambda r: (r["counterfactual"], r["instruction"])) for g in ranked[:limit]
    ]


def frame_times(horizon: int, first: int = 8) -> list[int]:
    """1-based generated frame numbers shown: 8, 16, 32, ... and always the last."""
    times, t = [], first
    while t < horizon:
        times.append(t)
        t *= 2
    return [*times, horizon]


def _tile(views: np.ndarray, scale: int) -> np.ndarray:
    """(V, H, W, 3) -> the views side by side, upscaled by ``scale``."""
    row = np.concatenate(list(views), axis=1)
    return cv2.resize(
        row, (row.shape[1] * scale, row.shape[0] * scale), interpolation=cv2.INTER_NEAREST
    )


def _caption(text: str, width: int, header: bool = False) -> np.ndarray:
    strip = np.full((CAPTION_H, width, 3), (32, 34, 40) if header else (16, 16, 18), np.uint8)
    cv2.putText(strip, text, (6, 15), FONT, 0.45, (235, 235, 235), 1, cv2.LINE_AA)
    return strip


def group_image(samples: list, gap: int = 4) -> np.ndarray:
    """One group's sheet: a header, then per sample a caption and [seed | t+8 | t+16 | ...]."""
    first = samples[0]
    v, h, w = first.frames.shape[0], first.frames.shape[2], first.frames.shape[3]
    scale = max(1, -(-MIN_TILE // h))
    times = frame_times(first.frames.shape[1])
    tile_w = v * w * scale
    width = (len(times) + 1) * (tile_w + gap) - gap
    meta = first.meta
    parts = [
        _caption(
            f"{meta['scene']} from frame {meta['start_frame']}: last seed frame, then generated "
            + ", ".join(f"t+{t}" for t in times)
            + "  (views left | front | right)",
            width,
            header=True,
        )
    ]
    spacer = np.zeros((h * scale, gap, 3), np.uint8)
    for s in samples:
        seed = np.stack(
            [
                cv2.resize(s.seed_frames[k, -1], (w, h), interpolation=cv2.INTER_AREA)
                for k in range(v)
            ]
        )
        tiles = [_tile(seed, scale)] + [_tile(s.frames[:, t - 1], scale) for t in times]
        flags = "".join(f" [{f}]" for f in ("counterfactual", "misleading") if s.meta.get(f))
        parts.append(_caption(f'"{s.meta["instruction"]}"{flags}', width))
        parts.append(np.concatenate([x for t in tiles for x in (t, spacer)][:-1], axis=1))
    return np.concatenate(parts, axis=0)


def write_gallery(
    output: Storage, report: Storage, limit: int = 4, skip: Collection[str] = ()
) -> list[str]:
    """Write ``gallery/*.png`` for up to ``limit`` groups into ``report``, none from the shards in
    ``skip``; returns their names."""
    index = read_index(output)
    keep = pc.invert(pc.is_in(index.column("shard"), pa.array(sorted(skip), pa.string())))
    groups = pick_groups(index.filter(keep), limit)
    wanted = {r["key"]: r["shard"] for g in groups for r in g}
    if not wanted:
        return []
    found = {}
    for raw in raw_samples(output, sorted(set(wanted.values()))):
        if raw["__key__"] in wanted:
            found[raw["__key__"]] = decode_sample(raw)
    names = []
    for g in groups:
        image = group_image([found[r["key"]] for r in g])
        name = f"gallery/{g[0]['scene']}-f{g[0]['start_frame']:05d}.png"
        ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f"could not encode {name}")
        report.put_bytes(name, png.tobytes())
        names.append(name)
    return names
