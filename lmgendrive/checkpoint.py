"""Checkpoints: a directory with ``config.json``, ``model.safetensors``, tokenizer files and ``README.md``.

Weights are read with safetensors only (never unpickled). Loading checks the recorded sha256 and
reports missing, unexpected and mis-shaped tensors and config problems as
:class:`~schemas.errors.CheckpointError`. Saving writes ``<dir>.partial`` and renames it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmgendrive.config import PRESETS, ModelConfig, preset_config
from lmgendrive.device import pick_device, pick_dtype
from lmgendrive.model import LMGenDrive, ModelIdentity
from lmgendrive.tokenizer import DEFAULT_CORPUS, build_tokenizer, load_tokenizer
from schemas.errors import CheckpointError, ConfigError
from storage.atomic import atomic_path

log = logging.getLogger(__name__)

FORMAT, FORMAT_VERSION = "lmgendrive-checkpoint", 1
CONFIG_FILE, WEIGHTS_FILE, README_FILE = "config.json", "model.safetensors", "README.md"
EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "checkpoints"
MAX_LISTED = 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """Content hash of the state dict (names, dtypes, shapes, bytes) of a model not loaded from a file."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def model_identity(model: LMGenDrive) -> ModelIdentity:
    """The model id and weights sha256 to record with generated samples."""
    if model.identity is None:
        sha = weights_sha256(model)
        model.identity = ModelIdentity(f"lmgendrive-{model.config.preset}-{sha[:12]}", sha)
    return model.identity


def save_checkpoint(model: LMGenDrive, directory: str | Path, model_id: str | None = None,
                    readme: str | None = None) -> ModelIdentity:
    """Write ``model`` to ``directory`` atomically; ``readme`` says how it was trained."""
    if model.tokenizer is None:
        raise CheckpointError("cannot save a model without a tokenizer")
    directory = Path(directory)
    with atomic_path(directory, directory=True) as partial:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, partial / WEIGHTS_FILE, metadata={"format": "pt"})
        sha = file_sha256(partial / WEIGHTS_FILE)
        identity = ModelIdentity(model_id or f"lmgendrive-{model.config.preset}-{sha[:12]}", sha)
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_id": identity.model_id,
                "weights_sha256": sha, "config": model.config.to_dict()}
        (partial / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        model.tokenizer.save_pretrained(str(partial))
        (partial / README_FILE).write_text(readme or _default_readme(model.config, identity))
    model.identity = identity
    log.info("saved %s to %s", identity.model_id, directory)
    return identity


def _default_readme(config: ModelConfig, identity: ModelIdentity) -> str:
    return (f"# {identity.model_id}\n\nLMGenDrive checkpoint, preset `{config.preset}`, "
            f"{len(config.views)} views at {config.image_size[1]}x{config.image_size[0]}, {config.fps} Hz.\n"
            f"`model.safetensors` sha256 {identity.sha256}.\n")


def build_untrained(config: ModelConfig | str, seed: int = 0) -> LMGenDrive:
    """A randomly initialised model (deterministic in ``seed``) with a word-level tokenizer over
    :data:`~lmgendrive.tokenizer.DEFAULT_CORPUS`; for tests and benchmarks."""
    config = preset_config(config) if isinstance(config, str) else config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LMGenDrive(config, build_tokenizer(DEFAULT_CORPUS, config.llm.vocab_size))


def load_checkpoint(source: str | Path, device: str | torch.device | None = None) -> LMGenDrive:
    """A model in eval mode on ``device`` (default :func:`~lmgendrive.device.pick_device`).

    ``source`` is a checkpoint directory or a preset name: ``tiny`` (random weights, seed 0),
    ``demo`` (the embedded checkpoint in ``checkpoints/demo``, trained on the procedural world) or ``paper``
    (pretrained components from local directories; the LMGenDrive-specific parts are untrained).
    """
    device = pick_device(device)
    dtype = None
    path = Path(source)
    if path.is_dir():
        model = _load_dir(path)
    elif str(source) == "demo":
        model = _load_dir(EMBEDDED_DIR / "demo")
    elif str(source) == "tiny":
        model = build_untrained("tiny")
    elif str(source) == "paper":
        from lmgendrive.pretrained import load_components

        config = preset_config("paper")
        dtype = pick_dtype(config.dtype, device)
        components, tokenizer = load_components(config, dtype)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = LMGenDrive(config, tokenizer, components)
    else:
        raise CheckpointError(f"{source!s} is neither a checkpoint directory nor a preset name "
                              f"({', '.join(sorted(PRESETS))})")
    dtype = dtype or pick_dtype(model.config.dtype, device)
    model_identity(model)
    return model.to(device=device, dtype=dtype).eval()


def _load_dir(directory: Path) -> LMGenDrive:
    config_path, weights = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not config_path.is_file():
        hint = " (train it with `lmgd train`)" if directory.parent == EMBEDDED_DIR else ""
        raise CheckpointError(f"{config_path} is missing: {directory} is not an lmgendrive checkpoint{hint}")
    try:
        meta = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{config_path} is not an lmgendrive checkpoint config "
                              f"(expected format {FORMAT!r} version {FORMAT_VERSION})")
    try:
        config = ModelConfig.from_dict(meta.get("config"))
    except ConfigError as exc:
        raise CheckpointError(f"{config_path}: {exc}") from exc
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing")
    sha = file_sha256(weights)
    if meta.get("weights_sha256") not in (None, sha):
        raise CheckpointError(f"{weights} is corrupt or was replaced: its sha256 {sha} differs from "
                              f"{meta['weights_sha256']} recorded in {config_path}")
    try:
        state = load_file(weights, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights} is not a readable safetensors file: {exc}") from exc
    tokenizer = load_tokenizer(directory)
    with torch.random.fork_rng(devices=[]):
        try:
            model = LMGenDrive(config, tokenizer)
        except ConfigError as exc:
            raise CheckpointError(f"{directory}: {exc}") from exc
    _check_tensors(model, state, weights, config_path)
    model.load_state_dict(state)
    model.identity = ModelIdentity(str(meta.get("model_id") or f"lmgendrive-{config.preset}-{sha[:12]}"), sha)
    log.info("loaded %s from %s", model.identity.model_id, directory)
    return model


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f", ... ({len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else "")


def _check_tensors(model: LMGenDrive, state: dict[str, torch.Tensor], weights: Path, config_path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if not (missing or unexpected or wrong):
        return
    lines = [f"{weights} does not match the model described by {config_path}:"]
    if missing:
        lines.append(f"  missing tensors ({len(missing)}): {_names(missing)}")
    if unexpected:
        lines.append(f"  unexpected tensors ({len(unexpected)}): {_names(unexpected)}")
    if wrong:
        details = [f"{k} {tuple(state[k].shape)} (config wants {tuple(expected[k].shape)})" for k in wrong]
        lines.append(f"  wrong shape ({len(wrong)}): {_names(details)}")
    raise CheckpointError("\n".join(lines))
