"""Checkpoints: a directory with ``config.json``, ``model.safetensors`` (or its shards and index,
:mod:`lmgendrive.weight_files`), tokenizer files and ``README.md``.

Weights are read with safetensors only (never unpickled), onto a weightless model skeleton.
Loading checks the recorded sha256 and reports missing, unexpected and mis-shaped tensors and
config problems as :class:`~schemas.errors.CheckpointError`, and returns the model with its
:class:`ModelIdentity` (what generated a sample). Saving writes ``<dir>.partial`` and renames
it. ``config.json`` alone is read by :mod:`lmgendrive.checkpoint_meta`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights

from lmgendrive.checkpoint_meta import (
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    README_FILE,
    checkpoint_dir,
    read_meta,
)
from lmgendrive.config import ModelConfig, preset_config
from lmgendrive.device import pick_device, pick_dtype
from lmgendrive.model import LMGenDrive
from lmgendrive.tokenizer import DEFAULT_CORPUS, build_tokenizer, load_tokenizer
from lmgendrive.weight_files import (
    MAX_SHARD_BYTES,
    file_sha256,
    header_shapes,
    identity_file,
    load_weights,
    save_weights,
    shard_files,
)
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
    model: LMGenDrive,
    directory: str | Path,
    model_id: str | None = None,
    readme: str | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    trained_stages: list[int] | None = None,
) -> ModelIdentity:
    """Write ``model`` to ``directory`` atomically (sharded above ``max_shard_bytes``, see
    :mod:`lmgendrive.weight_files`); ``readme`` says how it was trained, ``trained_stages`` which
    training stages its weights went through (recorded in ``config.json``)."""
    if model.tokenizer is None:
        raise CheckpointError("cannot save a model without a tokenizer")
    directory = Path(directory)
    with atomic_path(directory, directory=True) as partial:
        sha = save_weights(model.state_dict(), partial, max_shard_bytes)
        identity = ModelIdentity(model_id or f"lmgendrive-{model.config.preset}-{sha[:12]}", sha)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_id": identity.model_id,
            "weights_sha256": sha,
            "config": model.config.model_dump(mode="json"),
        }
        if trained_stages is not None:
            meta["trained_stages"] = sorted(trained_stages)
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


def build_model(
    config: ModelConfig | str, seed: int = 0, dtype: torch.dtype = torch.float32
) -> LMGenDrive:
    """The model a training run starts from: when ``config.pretrained`` names component
    directories, those components (:mod:`lmgendrive.pretrained`, read in ``dtype``) with the rest
    initialised from ``seed``; otherwise :func:`build_untrained`."""
    from lmgendrive.pretrained import load_components, load_resnet_trunk

    config = preset_config(config) if isinstance(config, str) else config
    if set(config.pretrained.named()) - {"resnet"}:
        components, tokenizer = load_components(config, dtype)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LMGenDrive(config, tokenizer, components)
    else:
        model = build_untrained(config, seed)
    load_resnet_trunk(model.vision, config)
    return model.to(dtype)


def load_checkpoint(
    source: str | Path, device: str | torch.device | None = None, keep_dtypes: bool = False
) -> tuple[LMGenDrive, ModelIdentity]:
    """A model in eval mode on ``device`` (default :func:`~lmgendrive.device.pick_device`) and its
    identity (the id and weights sha256 to record with generated samples).

    ``source`` is a checkpoint directory or a preset name: ``tiny`` (random weights, seed 0),
    ``demo`` (the embedded checkpoint in ``checkpoints/demo``, trained on the procedural world) or
    ``paper`` (pretrained components from local directories; the LMGenDrive-specific parts are
    untrained). A directory's model is built without weights and its tensors are read straight to
    ``device`` in the config's dtype (``keep_dtypes``: each in the dtype it was saved in, as a
    training stage continues): nothing is initialised only to be overwritten.
    """
    device = pick_device(device)
    directory = checkpoint_dir(source)
    if directory is not None:
        model, identity = _load_dir(directory, device, keep_dtypes)
        if keep_dtypes:
            return model.to(device).eval(), identity
    else:  # built in code: identified by its weights
        config = preset_config(str(source))
        model = build_model(config, dtype=pick_dtype(config.dtype, device))
        sha = weights_sha256(model)
        identity = ModelIdentity(f"lmgendrive-{model.config.preset}-{sha[:12]}", sha)
    return model.to(device=device, dtype=pick_dtype(model.config.dtype, device)).eval(), identity


def check_checkpoint(source: str | Path) -> str | None:
    """Every check loading ``source`` makes, without loading its weights: config, recorded
    sha256, tokenizer, and tensor names and shapes (the safetensors headers against the model built
    on the meta device); returns the weights' sha256. Presets built in code pass (``None``)."""
    directory = checkpoint_dir(source)
    if directory is None:
        return None
    _, config, sha, files = _verified(directory)
    with torch.device("meta"):
        model = _skeleton(directory, config)
    _check_tensors(model, header_shapes(files), files[0], directory / CONFIG_FILE)
    return sha


def _verified(directory: Path) -> tuple[dict, ModelConfig, str, list[Path]]:
    """The config of ``directory``, its weights' sha256 (checked against the recorded one) and
    its weight files (each shard checked against its index)."""
    meta, config = read_meta(directory)
    ident = identity_file(directory)
    sha = file_sha256(ident)
    if meta.get("weights_sha256") not in (None, sha):
        raise CheckpointError(
            f"{ident} is corrupt or was replaced: its sha256 {sha} differs from "
            f"{meta['weights_sha256']} recorded in {directory / CONFIG_FILE}"
        )
    return meta, config, sha, shard_files(directory)


def _skeleton(directory: Path, config: ModelConfig) -> LMGenDrive:
    """The model ``config`` describes, with the tokenizer of ``directory`` (weights as built)."""
    tokenizer = load_tokenizer(directory)
    with torch.random.fork_rng(devices=[]):
        try:
            return LMGenDrive(config, tokenizer)
        except ConfigError as exc:
            raise CheckpointError(f"{directory}: {exc}") from exc


def _load_dir(
    directory: Path, device: torch.device, keep_dtypes: bool
) -> tuple[LMGenDrive, ModelIdentity]:
    meta, config, sha, files = _verified(directory)
    shapes = header_shapes(files)
    with init_empty_weights():  # parameters on the meta device; buffers (small) as built
        model = _skeleton(directory, config)
    _check_tensors(model, shapes, files[0], directory / CONFIG_FILE)
    state = load_weights(files, device, None if keep_dtypes else pick_dtype(config.dtype, device))
    model.load_state_dict(state, assign=True)
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
