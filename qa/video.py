"""The FVD extractor: 16-frame clips -> I3D Kinetics-400 logits (averaged over time).

Two weight files are accepted (see :mod:`qa.weights`): StyleGAN-V's TorchScript
``i3d_torchscript.pt``, called as ``detector(x, rescale=False, resize=False, return_features=True)``
on our own preprocessing, and the state dict ``i3d_pretrained_400.pt``, loaded into
:class:`qa.i3d.I3D`.

Trust: a TorchScript archive is not unpickled into arbitrary Python objects, but its TorchScript
code runs with every registered operator at hand, so it is treated as trusted code. It is loaded
only from the configured weights directories and its sha256 is written into the report. The state
dict is read with ``torch.load(weights_only=True)`` (tensors only).

Preprocessing (cd-fvd's ``preprocess_i3d``): frames stretched to 224x224 with bilinear
``F.interpolate`` (``align_corners=False``) on 0..255 floats, then ``2x / 255 - 1``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmgendrive.checkpoint import file_sha256
from qa.i3d import I3D
from qa.weights import I3D_STATE_DICT, I3D_TORCHSCRIPT, find_weights
from schemas.errors import CheckpointError

log = logging.getLogger(__name__)

CLIP_FRAMES = 16
INPUT_SIZE = 224


def clip_starts(frames: int) -> list[int]:
    """First frames of the 16-frame clips of a ``frames``-long video: ``ceil(frames / 16)`` clips
    spread evenly from the first to the last frame (they overlap only when ``frames`` is not a
    multiple of 16). Videos shorter than 16 frames give one clip (see :func:`clips_of`)."""
    n = max(1, math.ceil(frames / CLIP_FRAMES))
    if n == 1:
        return [0]
    return [round(k * (frames - CLIP_FRAMES) / (n - 1)) for k in range(n)]


def clips_of(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) -> (n, 16, H, W, 3). Shorter videos (the 8-frame horizon) are stretched to 16
    frames by repeating each frame (nearest-neighbour in time), since the I3D needs at least 9."""
    t = len(frames)
    if t < CLIP_FRAMES:
        return frames[np.arange(CLIP_FRAMES) * t // CLIP_FRAMES][None]
    return np.stack([frames[s : s + CLIP_FRAMES] for s in clip_starts(t)])


def preprocess(clips: torch.Tensor) -> torch.Tensor:
    """uint8 (N, T, H, W, 3) -> float (N, 3, T, 224, 224) in [-1, 1]."""
    n, t = clips.shape[:2]
    x = clips.flatten(0, 1).float().permute(0, 3, 1, 2).contiguous()
    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    x = x.view(n, t, 3, INPUT_SIZE, INPUT_SIZE).transpose(1, 2).contiguous()
    return 2.0 * x / 255.0 - 1


class VideoExtractor:
    """uint8 clips (N, 16, H, W, 3) -> (N, D) float32 features."""

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
        description: str,
        batch_size: int = 4,
    ):
        self.model = model
        self.device = device
        self.description = description
        self.batch_size = batch_size

    def __call__(self, clips: np.ndarray) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start in range(0, len(clips), self.batch_size):
                batch = torch.from_numpy(
                    np.ascontiguousarray(clips[start : start + self.batch_size])
                )
                out.append(self.model(preprocess(batch.to(self.device))).float().cpu())
        return torch.cat(out).numpy()


def state_dict_i3d(path: Path) -> I3D:
    """:class:`I3D` (TF BatchNorm eps) with the state dict in ``path``."""
    net = I3D()
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:  # noqa: BLE001
        # unreadable or mismatched files are reported the same way
        raise CheckpointError(
            f"{path} is not a state dict of piergiaj's I3D (Kinetics-400): {exc}"
        ) from None
    return net.eval().requires_grad_(False)


def torchscript_i3d(path: Path, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """StyleGAN-V's detector, given inputs already resized and scaled."""
    try:
        with (
            warnings.catch_warnings()
        ):  # TorchScript is deprecated in torch, but it is the file's format
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location=device).eval()
    except Exception as exc:  # noqa: BLE001 - any unreadable archive is reported the same way
        raise CheckpointError(f"{path} is not a TorchScript archive: {exc}") from None
    return lambda x: module(x, rescale=False, resize=False, return_features=True)


def load_i3d(weights_dir: str | Path | None, device: torch.device) -> VideoExtractor:
    """The FVD extractor from whichever I3D weights file is found first."""
    path, kind = find_weights((I3D_TORCHSCRIPT, I3D_STATE_DICT), weights_dir)
    if kind is I3D_TORCHSCRIPT:
        model = torchscript_i3d(path, device)
        what = "StyleGAN-V TorchScript I3D"
    else:
        model = state_dict_i3d(path).to(device)
        what = "I3D (piergiaj layout, BN eps 1e-3)"
    description = (
        f"{what}, Kinetics-400 logits, 16-frame clips at 224x224; "
        f"{path.name} sha256:{file_sha256(path)[:16]}"
    )
    log.info("FVD extractor: %s", description)
    return VideoExtractor(model, device, description)
