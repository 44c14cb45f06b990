"""Contact sheets: a grid of frames (rows) by camera views (columns) with captions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from schemas.scene import Scene
from storage.atomic import write_bytes

CAPTION_H = 26
FONT = cv2.FONT_HERSHEY_SIMPLEX


def frame_strip(scene: Scene, i: int, width: int | None = None) -> np.ndarray:
    """One row: the views of frame ``i`` side by side under a caption line."""
    images = scene.images(i)
    m = scene.measurements(i)
    row = np.concatenate([images[v] for v in scene.views], axis=1)
    if width is not None and row.shape[1] != width:
        row = cv2.resize(
            row,
            (width, int(round(row.shape[0] * width / row.shape[1]))),
            interpolation=cv2.INTER_AREA,
        )
    flags = " [misleading]" if m.instruction.misleading else ""
    flags += " [done]" if m.instruction_completed else ""
    caption = (
        f"#{i} {m.speed * 3.6:4.1f} km/h light={m.light_state} {m.weather} | "
        f"{m.instruction.category}: {m.instruction.text}{flags}"
    )
    return np.concatenate([_caption(caption, row.shape[1]), row], axis=0)


def contact_sheet(
    scenes: Sequence[Scene], frames_per_scene: int = 4, width: int = 672
) -> np.ndarray:
    """Rows of evenly spaced frames from every scene, each row ``width`` pixels wide."""
    rows = []
    for scene in scenes:
        n = len(scene)
        k = min(frames_per_scene, n)
        picks = np.unique(((np.arange(k) + 0.5) * n / k).astype(int))  # evenly spaced, centred
        rows.append(_caption(f"{scene.name}  ({n} frames, {scene.fps:g} Hz)", width, header=True))
        rows += [frame_strip(scene, int(i), width) for i in picks]
    return np.concatenate(rows, axis=0)


def write_png(rgb: np.ndarray, path: str | Path) -> Path:
    """Write an RGB image as PNG, atomically (temporary file, then rename)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    return write_bytes(path, buf.tobytes())


def _caption(text: str, width: int, header: bool = False) -> np.ndarray:
    strip = np.full((CAPTION_H, width, 3), (32, 34, 40) if header else (16, 16, 18), np.uint8)
    scale = 0.45
    while cv2.getTextSize(text, FONT, scale, 1)[0][0] > width - 8 and scale > 0.3:
        scale -= 0.03
    if cv2.getTextSize(text, FONT, scale, 1)[0][0] > width - 8:
        keep = int(len(text) * (width - 8) / cv2.getTextSize(text, FONT, scale, 1)[0][0]) - 3
        text = text[:keep] + "..."
    cv2.putText(strip, text, (4, CAPTION_H - 9), FONT, scale, (235, 235, 235), 1, cv2.LINE_AA)
    return strip
