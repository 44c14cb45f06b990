"""The FID Inception-v3: pytorch-fid's architecture and preprocessing, weights from a local file.

The network is torchvision's Inception-v3 (``num_classes=1008, aux_logits=False``) with
pytorch-fid's FID blocks (``FIDInceptionA/C/E_1/E_2``, imported from pytorch-fid), cut into
pytorch-fid's four blocks; ``dims`` picks the output like pytorch-fid's ``--dims`` (2048 = pool3,
the FID protocol). Preprocessing equals pytorch-fid's loop (``ToTensor`` then the model's own
resize): uint8 / 255, bilinear ``F.interpolate`` to 299x299 (``align_corners=False``, no
antialiasing), then ``2x - 1``. It runs on batched tensors (no PIL round trip), channels-last, under
``torch.inference_mode``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2
from torch import nn

from lmgendrive.checkpoint import file_sha256
from qa.config import INCEPTION_DIMS, PROTOCOL_DIMS
from qa.weights import INCEPTION, find_weights
from schemas.errors import CheckpointError

log = logging.getLogger(__name__)

INPUT_SIZE = 299
DIMS = INCEPTION_DIMS


def inception_skeleton() -> nn.Module:
    """torchvision's Inception-v3 patched with pytorch-fid's FID blocks (random weights); its
    state dict has the 566 keys of ``pt_inception-2015-12-05-6726825d.pth``."""
    net = torchvision.models.inception_v3(
        num_classes=1008, aux_logits=False, weights=None, init_weights=False
    )
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    return net


class FIDInception(nn.Module):
    """Inception blocks up to the one giving ``dims`` features; input (N, 3, 299, 299) in
    [-1, 1]."""

    def __init__(self, net: nn.Module, dims: int = PROTOCOL_DIMS):
        super().__init__()
        if dims not in DIMS:
            raise ValueError(f"dims must be one of {DIMS}, got {dims}")
        self.dims = dims
        blocks = [
            [
                net.Conv2d_1a_3x3,
                net.Conv2d_2a_3x3,
                net.Conv2d_2b_3x3,
                nn.MaxPool2d(kernel_size=3, stride=2),
            ],
            [net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2)],
            [
                net.Mixed_5b,
                net.Mixed_5c,
                net.Mixed_5d,
                net.Mixed_6a,
                net.Mixed_6b,
                net.Mixed_6c,
                net.Mixed_6d,
                net.Mixed_6e,
            ],
            [net.Mixed_7a, net.Mixed_7b, net.Mixed_7c],
        ]
        self.blocks = nn.Sequential(*(m for block in blocks[: DIMS.index(dims) + 1] for m in block))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.blocks(x), 1).flatten(1)


def preprocess(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, 299, 299) in [-1, 1], exactly as pytorch-fid's loop."""
    x = frames.permute(0, 3, 1, 2).float().div(255)
    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return (2 * x - 1).contiguous(memory_format=torch.channels_last)


class InceptionExtractor:
    """uint8 frames (N, H, W, 3) -> (N, dims) float32 features."""

    def __init__(
        self, net: FIDInception, device: torch.device, description: str, batch_size: int = 32
    ):
        self.net = (
            net.to(device=device, memory_format=torch.channels_last).eval().requires_grad_(False)
        )
        self.device = device
        self.description = description
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        return self.net.dims

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start in range(0, len(frames), self.batch_size):
                batch = torch.from_numpy(
                    np.ascontiguousarray(frames[start : start + self.batch_size])
                )
                out.append(self.net(preprocess(batch.to(self.device))).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.dim), np.float32)


def load_inception_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, read with ``weights_only=True`` (tensors only, no code)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise CheckpointError(f"{path} is not a readable PyTorch state dict: {exc}") from None


def load_inception(
    weights_dir: str | Path | None, device: torch.device, dims: int = PROTOCOL_DIMS
) -> InceptionExtractor:
    """The FID extractor with weights from :data:`~qa.weights.INCEPTION` found in the weights
    directories."""
    path, _ = find_weights((INCEPTION,), weights_dir)
    net = inception_skeleton()
    try:
        net.load_state_dict(load_inception_state(path))
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit pytorch-fid's Inception-v3: {exc}") from None
    block = {64: "pool1", 192: "pool2", 768: "pre-aux", 2048: "pool3"}[dims]
    note = "" if dims == PROTOCOL_DIMS else " (not the FID protocol)"
    description = (
        f"pytorch-fid InceptionV3 {block} {dims}-d{note}; "
        f"{path.name} sha256:{file_sha256(path)[:16]}"
    )
    log.info("FID extractor: %s", description)
    return InceptionExtractor(FIDInception(net, dims), device, description)
