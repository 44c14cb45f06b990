"""Exact-resume training states: safetensors for tensors, JSON for scalars (nothing is pickled).

A state directory holds ``model.safetensors`` (the whole state dict), ``optimizer.safetensors``
(per-parameter tensors, keys ``<param index>.<name>``), ``rng.safetensors`` (torch CPU and CUDA
generator states) and ``trainer.json`` (step, samples consumed, optimizer param groups, scheduler
state, Python and NumPy RNG states). It is written to ``<dir>.partial`` and renamed.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from schemas.errors import CheckpointError
from storage.atomic import atomic_path

FORMAT = "lmgendrive-train-state"


@dataclass
class Progress:
    """Where a stage stands: iterations done and samples consumed (the data position)."""

    stage: int
    step: int
    samples: int


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, slots in sd["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return tensors, {
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
    }


def _set_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    name, keys, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_state(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: Progress,
) -> None:
    """Write everything needed to continue bit for bit to ``directory`` (atomically)."""
    with atomic_path(directory, directory=True) as partial:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, partial / "model.safetensors")
        opt_tensors, opt_meta = _optimizer_tensors(optimizer)
        save_file(opt_tensors, partial / "optimizer.safetensors")
        rng_tensors, rng_meta = _rng_state()
        save_file(rng_tensors, partial / "rng.safetensors")
        meta = {
            "format": FORMAT,
            "progress": asdict(progress),
            "optimizer": opt_meta,
            "scheduler": scheduler.state_dict(),
            "rng": rng_meta,
        }
        (partial / "trainer.json").write_text(json.dumps(meta) + "\n")


def load_state(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> Progress:
    """Restore a :func:`save_state` directory into ``model``, ``optimizer``, ``scheduler`` and the
    RNGs."""
    try:
        meta = json.loads((directory / "trainer.json").read_text())
        weights = load_file(directory / "model.safetensors", device="cpu")
        opt_tensors = load_file(directory / "optimizer.safetensors", device="cpu")
        rng_tensors = load_file(directory / "rng.safetensors", device="cpu")
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{directory}: unreadable training state ({exc}); delete it to restart the stage"
        ) from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{directory}/trainer.json is not a {FORMAT} file")
    model.load_state_dict(weights)
    optimizer.load_state_dict(_optimizer_state(opt_tensors, meta["optimizer"]))
    scheduler.load_state_dict(meta["scheduler"])
    _set_rng(rng_tensors, meta["rng"])
    return Progress(**meta["progress"])
