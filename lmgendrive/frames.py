"""Conversions between uint8 frames (..., H, W, 3) and the model's float pixels (..., 3, H, W) in
[-1, 1]."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from schemas.errors import BadInputError


def to_pixels(
    frames: np.ndarray | torch.Tensor,
    size: tuple[int, int],
    device: torch.device,
    name: str = "frames",
) -> torch.Tensor:
    """uint8 RGB ``frames`` (..., H, W, 3) -> float32 (..., 3, h, w) in [-1, 1], resized to
    ``size`` = (h, w)."""
    t = torch.as_tensor(frames)
    if t.dtype != torch.uint8 or t.ndim < 3 or t.shape[-1] != 3:
        raise BadInputError(
            f"{name} must be uint8 RGB with shape (..., H, W, 3), got {tuple(t.shape)} {t.dtype}"
        )
    lead = t.shape[:-3]
    x = t.to(device).reshape(-1, *t.shape[-3:]).permute(0, 3, 1, 2).float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return (x / 127.5 - 1.0).reshape(*lead, 3, *size)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """float ``pixels`` (..., 3, H, W) in [-1, 1] -> uint8 numpy (..., H, W, 3)."""
    x = ((pixels.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()
