"""Reading one file of a route folder or dataset root, every problem a :class:`SceneFormatError`.

Every file the reader loads goes through :func:`read_bytes`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from schemas.errors import SceneFormatError

PathLike = str | os.PathLike
_FRAME_RE = re.compile(r"^(\d{4,})\.([a-z]+)$")


def read_bytes(path: Path) -> bytes:
    """The bytes of ``path``."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise SceneFormatError(f"{path}: cannot read ({e.strerror or e})") from e


def read_text(path: Path, errors: str = "strict") -> str:
    """``path`` as UTF-8 text; ``errors`` as for :meth:`bytes.decode`."""
    try:
        return read_bytes(path).decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise SceneFormatError(f"{path}: not UTF-8 text ({e})") from e


def read_json(path: Path) -> object:
    """``path`` parsed as JSON."""
    try:
        return json.loads(read_bytes(path))
    except ValueError as e:
        raise SceneFormatError(f"{path}: malformed JSON ({e})") from e


def read_json_object(path: Path) -> dict:
    """``path`` parsed as a JSON object."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise SceneFormatError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def decode_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    buf = np.frombuffer(read_bytes(path), dtype=np.uint8)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if bgr is None:
        raise SceneFormatError(f"{path}: not a readable image (corrupt, truncated or empty)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except OSError as e:
        raise SceneFormatError(f"{path}: not a readable image ({e})") from e
    return height, width


def check_size(path: Path, img: np.ndarray, size: tuple[int, int]) -> None:
    """Raise unless the image read from ``path`` is ``size`` (height, width)."""
    if img.shape[:2] != tuple(size):
        raise SceneFormatError(
            f"{path}: image is {img.shape[1]}x{img.shape[0]} pixels, the route's images are "
            f"{size[1]}x{size[0]}"
        )


def count_frames(folder: Path, exts: Sequence[str]) -> tuple[int, str]:
    """Number of frames ``0000 .. N-1`` in ``folder`` and their extension; gaps are errors."""
    if not folder.is_dir():
        raise SceneFormatError(f"{folder}: missing folder")
    found: dict[int, str] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            m = _FRAME_RE.match(entry.name)
            if m and m.group(2) in exts:
                found[int(m.group(1))] = m.group(2)
    if not found:
        raise SceneFormatError(
            f"{folder}: no frames (expected 0000.{exts[0]}, 0001.{exts[0]}, ...)"
        )
    kinds = sorted(set(found.values()))
    if len(kinds) > 1:
        raise SceneFormatError(f"{folder}: mixed frame file types {kinds}; use one per folder")
    n = len(found)
    gap = next((i for i in range(n) if i not in found), None)
    if gap is not None:
        raise SceneFormatError(
            f"{folder / f'{gap:04d}.{kinds[0]}'}: missing frame ({folder.name}/ holds {n} files "
            f"numbered up to {max(found):04d})"
        )
    return n, kinds[0]
