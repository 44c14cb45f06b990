"""FD-drive features: the project's separately trained evaluator encoder, never the model under
test.

The evaluator is a checkpoint directory (``checkpoints/evaluator`` by default) with ``config.json``
(an lmgendrive checkpoint config: ``{"config": <ModelConfig>, "weights_sha256": ...}``) and
``model.safetensors`` holding either a whole LMGenDrive state dict (only the ``vision.*`` tensors
are used) or a bare :class:`~lmgendrive.vision.VisionEncoder` state dict. Weights are read with
safetensors only.

One feature vector per multi-view frame (the encoder fuses the views, so FD-drive has no per-view
figure): the views, resized to the evaluator's ``image_size`` as the model resizes its inputs
(:func:`lmgendrive.frames.to_pixels`), give the decoder's visual tokens, and the feature is
``concat(mean of the BEV tokens, mean of the waypoint tokens, the traffic-light token)``, 3 x
``dim``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lmgendrive.checkpoint import file_sha256
from lmgendrive.config import ModelConfig
from lmgendrive.frames import to_pixels
from lmgendrive.vision import VisionEncoder
from schemas.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def load_evaluator(directory: Path) -> tuple[VisionEncoder, ModelConfig, str]:
    """The evaluator's vision encoder (frozen), its config and the weights' sha256."""
    config_path, weights = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for f in (config_path, weights):
        if not f.is_file():
            raise CheckpointError(
                f"{f} is missing: {directory} is not an evaluator checkpoint "
                f"(config.json + model.safetensors)"
            )
    try:
        meta = json.loads(config_path.read_text())
        config = ModelConfig.from_dict(meta["config"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(
            f"{config_path}: not an lmgendrive checkpoint config: {exc}"
        ) from None
    sha = file_sha256(weights)
    if meta.get("weights_sha256") not in (None, sha):
        raise CheckpointError(
            f"{weights}: sha256 {sha} differs from {meta['weights_sha256']} in {config_path}"
        )
    try:
        state = load_file(weights, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights} is not a readable safetensors file: {exc}") from None
    if any(k.startswith("vision.") for k in state):
        state = {k.removeprefix("vision."): v for k, v in state.items() if k.startswith("vision.")}
    encoder = VisionEncoder(config.vision, len(config.views))
    try:
        encoder.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{weights} does not fit the vision encoder of {config_path}: {exc}"
        ) from None
    encoder.freeze()
    return encoder, config, sha


class DriveExtractor:
    """uint8 multi-view frames (N, V, H, W, 3) -> (N, 3 * dim) float32 features."""

    def __init__(
        self,
        encoder: VisionEncoder,
        config: ModelConfig,
        device: torch.device,
        description: str,
        batch_size: int = 16,
    ):
        self.encoder = encoder.to(device)
        self.views = tuple(config.views)
        self.size = tuple(config.image_size)
        self.device = device
        self.description = description
        self.batch_size = batch_size

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start in range(0, len(frames), self.batch_size):
                pixels = to_pixels(
                    frames[start : start + self.batch_size],
                    self.size,
                    self.device,
                    "FD-drive frames",
                )
                tokens = self.encoder(pixels)
                out.append(
                    torch.cat(
                        [tokens.bev.mean(1), tokens.waypoints.mean(1), tokens.light[:, 0]], 1
                    ).cpu()
                )
        return torch.cat(out).float().numpy()


def load_drive(directory: Path, device: torch.device) -> DriveExtractor:
    encoder, config, sha = load_evaluator(directory)
    description = (
        f"evaluator VisionEncoder ({config.vision.backbone}, dim {config.vision.dim}) pooled "
        f"BEV/waypoint/light tokens, {3 * config.vision.dim}-d; {directory.name} sha256:{sha[:16]}"
    )
    log.info("FD-drive extractor: %s", description)
    return DriveExtractor(encoder, config, device, description)
