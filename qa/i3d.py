"""Inception-v1 I3D (Carreira & Zisserman 2017) with the parameter names of piergiaj's PyTorch port.

``i3d_pretrained_400.pt`` (the VideoGPT / cd-fvd FVD weights) loads into :class:`I3D` as is.
Convolutions and max pools use TensorFlow "SAME" padding computed from the input size, as the TF
original and the port do. BatchNorm eps is 1e-3, TF's (and piergiaj's) value, which the converted
weights were trained with; cd-fvd's copy uses 1e-5, hence ``bn_eps``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

TF_BN_EPS = 1e-3
MIN_FRAMES = (
    9  # the temporal strides leave fewer than the final 2-frame average pool needs below this
)


def same_padding(
    size: Sequence[int], kernel: Sequence[int], stride: Sequence[int]
) -> tuple[int, ...]:
    """``F.pad`` amounts (last dimension first) for TF "SAME" padding of a (T, H, W) input."""
    pads: list[int] = []
    for s, k, st in zip(reversed(size), reversed(kernel), reversed(stride), strict=True):
        total = max(k - st, 0) if s % st == 0 else max(k - s % st, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


class Unit3D(nn.Module):
    """SAME-padded Conv3d, optional BatchNorm, optional ReLU."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: Sequence[int] = (1, 1, 1),
        stride: Sequence[int] = (1, 1, 1),
        bn_eps: float = TF_BN_EPS,
        batch_norm: bool = True,
        relu: bool = True,
        bias: bool = False,
    ):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=bn_eps, momentum=0.001) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(F.pad(x, same_padding(x.shape[2:], self.kernel, self.stride)))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    """Max pool over a zero-padded (SAME) input, as the port does."""

    def __init__(self, kernel: Sequence[int], stride: Sequence[int]):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(
            F.pad(x, same_padding(x.shape[2:], self.kernel, self.stride)), self.kernel, self.stride
        )


class Mixed(nn.Module):
    """Inception module: 1x1 | 1x1-3x3 | 1x1-3x3 | maxpool-1x1 branches, concatenated."""

    def __init__(self, cin: int, widths: Sequence[int], bn_eps: float):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = Unit3D(cin, w0, bn_eps=bn_eps)
        self.b1a = Unit3D(cin, w1a, bn_eps=bn_eps)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3), bn_eps=bn_eps)
        self.b2a = Unit3D(cin, w2a, bn_eps=bn_eps)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3), bn_eps=bn_eps)
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(cin, w3, bn_eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


class I3D(nn.Module):
    """Video (N, 3, T, 224, 224) in [-1, 1], T >= 9 -> class logits (N, num_classes) averaged over
    time."""

    def __init__(self, num_classes: int = 400, bn_eps: float = TF_BN_EPS):
        super().__init__()
        e = bn_eps
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2), bn_eps=e)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64, bn_eps=e)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), bn_eps=e)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = Mixed(192, (64, 96, 128, 16, 32, 32), e)
        self.Mixed_3c = Mixed(256, (128, 128, 192, 32, 96, 64), e)
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = Mixed(480, (192, 96, 208, 16, 48, 64), e)
        self.Mixed_4c = Mixed(512, (160, 112, 224, 24, 64, 64), e)
        self.Mixed_4d = Mixed(512, (128, 128, 256, 24, 64, 64), e)
        self.Mixed_4e = Mixed(512, (112, 144, 288, 32, 64, 64), e)
        self.Mixed_4f = Mixed(528, (256, 160, 320, 32, 128, 128), e)
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = Mixed(832, (256, 160, 320, 32, 128, 128), e)
        self.Mixed_5c = Mixed(832, (384, 192, 384, 48, 128, 128), e)
        self.logits = Unit3D(1024, num_classes, batch_norm=False, relu=False, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name, module in self.named_children():
            if name != "logits":
                x = module(x)
        x = self.logits(F.avg_pool3d(x, kernel_size=(2, 7, 7), stride=1))
        return x.flatten(3).mean(dim=3).mean(dim=2)
