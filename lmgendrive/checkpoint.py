"""Checkpoints: a directory with ``config.json``, ``model.safetensors``, tokenizer files and
``README.md``.

Weights are read with safetensors only (never unpickled). Loading checks the recorded sha256 and
reports missing, unexpected and mis-shaped tensors and config problems as
:class:`~schemas.errors.CheckpointError`, and returns the model with its :class:`ModelIdentity`
(what generated a sample). Saving writes ``<dir>.partial`` and renames it. ``config.json`` alone is
read by :mod:`lmgendrive.checkpoint_meta`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from lmgendrive.checkpoint_meta import (
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    README_FILE,
    WEIGHTS_FILE,
    checkpoint_dir,
    read_meta,
)
from lmgendrive.config import ModelConfig, preset_config
from lmgendrive.device import pick_device, pick_dtype
from lmgendrive.model import LMGenDrive
from lmgendrive.tokenizer import DEFAULT_CORPUS, build_tokenizer, load_tokenizer
from schemas.errors import CheckpointError, ConfigError
from storage.atomic import atomic_path

log = logging.getLogger(__name__)

MAX_LISTED = 20


@dataclass(frozen=True)
class ModelIdentity:
    """What generated a sample: model id and the sha256 of ``model.safetensors`` (or of the
    weights of a model built in code)."""

    model_id: str
    sha256: str


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """Content hash of the state dict (names, dtypes, shapes, bytes) of a model not loaded from a
    file."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def save_checkpoint(
    model: LMGenDrive, directory: str | Path, model_id: str | None = None, readme: str | None = None
) -> ModelIdentity:
    """Write ``model`` to ``directory`` atomically; ``readme`` says how it was trained."""
    if model.tokenizer is None:
        raise CheckpointError("cannot save a model without a tokenizer")
    directory = Path(directory)
    with atomic_path(directory, directory=True) as partial:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, partial / WEIGHTS_FILE, metadata={"format": "pt"})
        sha = file_sha256(partial / WEIGHTS_FILE)
        identity = ModelIdentity(model_id or f"lmgendrive-{model.config.preset}-{sha[:12]}", sha)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_id": identity.model_id,
            "weights_sha256": sha,
            "config": model.config.model_dump(mode="json"),
        }
        (partial / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        model.tokenizer.save_pretrained(str(partial))
        (partial / README_FILE).write_text(readme or _default_readme(model.config, identity))
    log.info("saved %s to %s", identity.model_id, directory)
    return identity


def _default_readme(config: ModelConfig, identity: ModelIdentity) -> str:
    return (
        f"# {identity.model_id}\n\nLMGenDrive checkpoint, preset `{config.preset}`, "
        f"{len(config.views)} views at {config.image_size[1]}x{config.image_size[0]}, "
        f"{config.fps} Hz.\n"
        f"`model.safetensors` sha256 {identity.sha256}.\n"
    )


def build_untrained(config: ModelConfig | str, seed: int = 0) -> LMGenDrive:
    """A randomly initialised model (deterministic in ``seed``) with a word-level tokenizer over
    :data:`~lmgendrive.tokenizer.DEFAULT_CORPUS`; for tests and benchmarks."""
    config = preset_config(config) if isinstance(config, str) else config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LMGenDrive(config, build_tokenizer(DEFAULT_CORPUS, config.llm.vocab_size))


def load_checkpoint(
    source: str | Path, device: str | torch.device | None = None
) -> tuple[LMGenDrive, ModelIdentity]:
    """A model in eval mode on ``device`` (default :func:`~lmgendrive.device.pick_device`) and its
    identity (the id and weights sha256 to record with generated samples).

    ``source`` is a checkpoint directory or a preset name: ``tiny`` (random weights, seed 0),
    ``demo`` (the embedded checkpoint in ``checkpoints/demo``, trained on the procedural world) or
    ``paper`` (pretrained components from local directories; the LMGenDrive-specific parts are
    untrained).
    """
    device = pick_device(device)
    directory = checkpoint_dir(source)
    if directory is not None:
        model, identity = _load_dir(directory)
        dtype = pick_dtype(model.config.dtype, device)
    else:  # built in code: identified by its weights
        model, dtype = _build(str(source), device)
        sha = weights_sha256(model)
        identity = ModelIdentity(f"lmgendrive-{model.config.preset}-{sha[:12]}", sha)
    return model.to(device=device, dtype=dtype).eval(), identity


def _build(preset: str, device: torch.device) -> tuple[LMGenDrive, torch.dtype]:
    """``tiny`` (random weights, seed 0) or ``paper`` (pretrained components), and its dtype."""
    if preset == "tiny":
        model = build_untrained("tiny")
        return model, pick_dtype(model.config.dtype, device)
    from lmgendrive.pretrained import load_components

    config = preset_config("paper")
    dtype = pick_dtype(config.dtype, device)
    components, tokenizer = load_components(config, dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LMGenDrive(config, tokenizer, components), dtype


def check_checkpoint(source: str | Path) -> None:
    """Every check loading ``source`` makes, without reading its weights: config, recorded
    sha256, tokenizer, and tensor names and shapes (the safetensors header against the model built
    on the meta device). Presets built in code pass."""
    directory = checkpoint_dir(source)
    if directory is None:
        return
    _, config, _ = _verified(directory)
    weights = directory / WEIGHTS_FILE
    try:
        with safe_open(weights, framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights} is not a readable safetensors file: {exc}") from exc
    with torch.device("meta"):
        model = _skeleton(directory, config)
    _check_tensors(model, shapes, weights, directory / CONFIG_FILE)


def _verified(directory: Path) -> tuple[dict, ModelConfig, str]:
    """The config of ``directory`` and its weights' sha256, checked against the recorded one."""
    meta, config = read_meta(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing")
    sha = file_sha256(weights)
    if meta.get("weights_sha256") not in (None, sha):
        raise CheckpointError(
            f"{weights} is corrupt or was replaced: its sha256 {sha} differs from "
            f"{meta['weights_sha256']} recorded in {directory / CONFIG_FILE}"
        )
    return meta, config, sha


def _skeleton(directory: Path, config: ModelConfig) -> LMGenDrive:
    """The model ``config`` describes, with the tokenizer of ``directory`` (weights as built)."""
    tokenizer = load_tokenizer(directory)
    with torch.random.fork_rng(devices=[]):
        try:
            return LMGenDrive(config, tokenizer)
        except ConfigError as exc:
            raise CheckpointError(f"{directory}: {exc}") from exc


def _load_dir(directory: Path) -> tuple[LMGenDrive, ModelIdentity]:
    meta, config, sha = _verified(directory)
    weights = directory / WEIGHTS_FILE
    try:
        state = load_file(weights, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights} is not a readable safetensors file: {exc}") from exc
    model = _skeleton(directory, config)
    _check_tensors(
        model, {k: tuple(v.shape) for k, v in state.items()}, weights, directory / CONFIG_FILE
    )
    model.load_state_dict(state)
    model_id = str(meta.get("model_id") or f"lmgendrive-{config.preset}-{sha[:12]}")
    identity = ModelIdentity(model_id, sha)
    log.info("loaded %s from %s", identity.model_id, directory)
    return model, identity


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f", ... ({len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else "")


def _check_tensors(
    model: LMGenDrive, shapes: dict[str, tuple[int, ...]], weights: Path, config_path: Path
) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if expected[k] != shapes[k])
    if not (missing or unexpected or wrong):
        return
    lines = [f"{weights} does not match the model described by {config_path}:"]
    if missing:
        lines.append(f"  missing tensors ({len(missing)}): {_names(missing)}")
    if unexpected:
        lines.append(f"  unexpected tensors ({len(unexpected)}): {_names(unexpected)}")
    if wrong:
        details = [f"{k} {shapes[k]} (config wants {expected[k]})" for k in wrong]
        lines.append(f"  wrong shape ({len(wrong)}): {_names(details)}")
    raise CheckpointError("\n".join(lines))
