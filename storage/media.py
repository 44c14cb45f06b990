"""Encoding and decoding frame stacks: H.264 mp4 through PyAV, or lossless PNG frames.

Encoding is deterministic (one encoder thread, no macroblock-tree, fixed settings), so the same
frames give the same bytes. Decoding uses decord when installed and PyAV otherwise.
"""

from __future__ import annotations

import io

import av
import cv2
import numpy as np

from schemas.errors import BadInputError

FORMATS = ("mp4", "png")


def encode_mp4(frames: np.ndarray, fps: float = 10.0, crf: int = 18) -> bytes:
    """(T, H, W, 3) uint8 RGB -> H.264 mp4 bytes (yuv420p, so H and W must be even)."""
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise BadInputError(f"H.264 needs even frame sizes, got {w}x{h}; use PNG encoding instead")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.thread_count = 1  # identical bytes on every run
        # macroblock-tree rate control reads memory that varies from run to run on small frames
        # (1 encode in ~200 differed at 32x32 with x264 in PyAV 18), so it is off
        stream.options = {
            "crf": str(crf),
            "preset": "medium",
            "threads": "1",
            "x264-params": "mbtree=0",
        }
        for i, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            picture.pts = i
            container.mux(stream.encode(picture))
        container.mux(stream.encode())
    return buf.getvalue()


def decode_mp4(data: bytes) -> np.ndarray:
    """mp4 bytes -> (T, H, W, 3) uint8 RGB."""
    try:
        import decord
    except ImportError:
        decord = None
    if decord is not None:
        reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
        return reader.get_batch(list(range(len(reader)))).asnumpy()
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def encode_png(frame: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(
        ".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 3]
    )
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise BadInputError("not a PNG image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
