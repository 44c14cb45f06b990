"""Seeded random weight files in the published layouts, for offline tests and bench/fid_speed.py.

They let our extractors and the reference packages (pytorch-fid, torch-fidelity, cd-fvd) load the
very same tensors, and exercise the real lookup and loading code, without any download. Figures
computed with them are meaningless as quality measures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from lmgendrive.checkpoint import file_sha256
from qa.i3d import I3D
from qa.inception import inception_skeleton
from qa.weights import I3D_STATE_DICT, INCEPTION


def random_state_dict(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """He-scaled weights, BatchNorm scales and running variances in [0.5, 1.5], small biases and
    means."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in module.state_dict().items():
        if name.endswith("num_batches_tracked"):
            out[name] = t.clone()
        elif name.endswith(("running_var", "bn.weight")) or (
            t.ndim == 1 and name.endswith(".weight")
        ):
            out[name] = 0.5 + torch.rand(t.shape, generator=g)
        elif t.ndim == 1:
            out[name] = 0.1 * torch.randn(t.shape, generator=g)
        else:
            out[name] = torch.randn(t.shape, generator=g) * math.sqrt(2.0 / t[0].numel())
    return out


def write_inception_weights(directory: Path, seed: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(random_state_dict(inception_skeleton(), seed), directory / INCEPTION.name)
    return directory / INCEPTION.name


def write_i3d_weights(directory: Path, seed: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(random_state_dict(I3D(), seed), directory / I3D_STATE_DICT.name)
    return directory / I3D_STATE_DICT.name


def write_evaluator(directory: Path, preset: str = "tiny", seed: int = 0) -> Path:
    """An evaluator checkpoint (config.json + model.safetensors) with a random vision encoder."""
    from lmgendrive.config import preset_config
    from lmgendrive.vision import VisionEncoder

    config = preset_config(preset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = VisionEncoder(config.vision, len(config.views))
    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in encoder.state_dict().items()},
        directory / "model.safetensors",
    )
    meta = {
        "format": "lmgendrive-checkpoint",
        "format_version": 1,
        "config": config.model_dump(mode="json"),
        "weights_sha256": file_sha256(directory / "model.safetensors"),
    }
    (directory / "config.json").write_text(json.dumps(meta, indent=2))
    return directory
