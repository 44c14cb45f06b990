"""Run-time device and dtype choice."""

from __future__ import annotations

import logging
import os

import torch

from schemas.errors import ConfigError

log = logging.getLogger(__name__)

DEVICE_ENV = "LMGD_DEVICE"


def pick_device(preferred: str | torch.device | None = None) -> torch.device:
    """``preferred`` if given, else ``$LMGD_DEVICE``, else CUDA, then Apple MPS, then CPU."""
    choice = preferred if preferred is not None else os.environ.get(DEVICE_ENV)
    if choice is not None:
        try:
            device = torch.device(choice)
        except RuntimeError as exc:
            raise ConfigError(f"invalid device {choice!r}: {exc}") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"device {choice!r} requested but CUDA is not available on this machine"
            )
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """The configured dtype on accelerators; float32 on CPU, where half precision is slow."""
    dtype = getattr(torch, name)
    if device.type == "cpu" and dtype != torch.float32:
        log.info("using float32 instead of %s on CPU", name)
        return torch.float32
    return dtype
