"""The safetensors weights of a checkpoint directory: one ``model.safetensors``, or, above
``max_shard_bytes``, shards ``model-00001-of-0000N.safetensors`` with
``model.safetensors.index.json`` (``weight_map``: tensor name -> file), as ``transformers`` writes.

Identity: the sha256 of ``model.safetensors``, or of the index file, which records every shard's
own sha256 (``metadata.shard_sha256``), checked before any shard is read. Loading never unpickles
and never copies a tensor it does not have to: safetensors maps the file, tensors are read where
they are used, and cast only when the requested dtype differs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from lmgendrive.checkpoint_meta import WEIGHTS_FILE
from schemas.errors import CheckpointError

INDEX_FILE = "model.safetensors.index.json"
SHARD_PATTERN = "model{suffix}.safetensors"
MAX_SHARD_BYTES = 2 * 2**30  # one file up to 2 GiB, as transformers' default shard size


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(
    state: dict[str, torch.Tensor], directory: Path, max_shard_bytes: int = MAX_SHARD_BYTES
) -> str:
    """Write ``state`` into ``directory`` (one file, or shards and an index above
    ``max_shard_bytes``) and return the identity sha256. Each shard's tensors are moved to the
    host only while that shard is written, so a model on an accelerator is never copied whole."""
    split = split_torch_state_dict_into_shards(
        state, filename_pattern=SHARD_PATTERN, max_shard_size=max_shard_bytes
    )
    if not split.is_sharded:
        path = directory / WEIGHTS_FILE
        save_file(_host(state, list(state)), path, metadata={"format": "pt"})
        return file_sha256(path)
    shas = {}
    for name, keys in split.filename_to_tensors.items():
        save_file(_host(state, keys), directory / name, metadata={"format": "pt"})
        shas[name] = file_sha256(directory / name)
    index = {
        "metadata": {"total_size": split.metadata["total_size"], "shard_sha256": shas},
        "weight_map": split.tensor_to_filename,
    }
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return file_sha256(directory / INDEX_FILE)


def _host(state: dict[str, torch.Tensor], keys: list[str]) -> dict[str, torch.Tensor]:
    return {k: state[k].detach().to("cpu").contiguous() for k in keys}


def identity_file(directory: Path) -> Path:
    """The file whose sha256 identifies the weights: the index of a sharded checkpoint, else
    ``model.safetensors``; :class:`CheckpointError` when neither exists."""
    for name in (INDEX_FILE, WEIGHTS_FILE):
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory / WEIGHTS_FILE} is missing (nor is there {INDEX_FILE})")


def shard_files(directory: Path) -> list[Path]:
    """The weight files of ``directory``, each checked against the sha256 its index records."""
    ident = identity_file(directory)
    if ident.name == WEIGHTS_FILE:
        return [ident]
    try:
        index = json.loads(ident.read_text())
        shas = index["metadata"]["shard_sha256"]
        names = sorted(set(index["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{ident} is not a valid index (need metadata.shard_sha256 and weight_map): {exc}"
        ) from exc
    files = []
    for name in names:
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing ({ident} lists it)")
        if file_sha256(path) != shas.get(name):
            raise CheckpointError(
                f"{path} is corrupt or was replaced: its sha256 differs from what {ident} records"
            )
        files.append(path)
    return files


def header_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the safetensors headers, no tensor data read."""
    shapes = {}
    for path in files:
        try:
            with safe_open(path, framework="pt") as f:
                shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    return shapes


def load_weights(
    files: list[Path], device: torch.device, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Every tensor of ``files`` on ``device``; floating tensors cast to ``dtype`` when given."""
    where = "cpu" if device.type == "cpu" else str(device)  # safetensors refuses "cpu:0"
    state = {}
    for path in files:
        try:
            part = load_file(path, device=where)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
        for name, tensor in part.items():
            cast = dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype
            state[name] = tensor.to(dtype) if cast else tensor
    return state
