"""A checkpoint's ``config.json`` (format, model id, weights sha256, model config) and what a model
reference names, read without torch: the driver resolves a job's sampler from it before any
worker loads weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmgendrive.config import PRESETS, ModelConfig, preset_config
from schemas.errors import BadInputError, CheckpointError, ConfigError
from schemas.shipped import data_root

FORMAT, FORMAT_VERSION = "lmgendrive-checkpoint", 1
CONFIG_FILE, WEIGHTS_FILE, README_FILE = "config.json", "model.safetensors", "README.md"
EMBEDDED_DIR = data_root() / "checkpoints"  # the checkout's, or the installed wheel's
BUILT = ("tiny", "paper")  # presets built in code (random or pretrained weights), not a directory


def checkpoint_dir(source: str | Path) -> Path | None:
    """The directory ``source`` names: itself, or ``checkpoints/demo`` for ``demo``; ``None`` for
    the presets built in code (``tiny``, ``paper``)."""
    path = Path(source)
    if path.is_dir():
        return path
    if str(source) == "demo":
        return EMBEDDED_DIR / "demo"
    if str(source) in BUILT:
        return None
    raise CheckpointError(
        f"{source!s} is neither a checkpoint directory nor a preset name "
        f"({', '.join(sorted(PRESETS))})"
    )


def read_meta(directory: Path) -> tuple[dict, ModelConfig]:
    """The parsed ``config.json`` of ``directory`` and its model config; problems raise
    :class:`CheckpointError` naming the file."""
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        hint = " (train it with `lmgd train`)" if directory.parent == EMBEDDED_DIR else ""
        raise CheckpointError(
            f"{config_path} is missing: {directory} is not an lmgendrive checkpoint{hint}"
        )
    try:
        meta = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from exc
    if (
        not isinstance(meta, dict)
        or meta.get("format") != FORMAT
        or meta.get("format_version") != FORMAT_VERSION
    ):
        raise CheckpointError(
            f"{config_path} is not an lmgendrive checkpoint config "
            f"(expected format {FORMAT!r} version {FORMAT_VERSION})"
        )
    try:
        return meta, ModelConfig.from_dict(meta.get("config"))
    except ConfigError as exc:
        raise CheckpointError(f"{config_path}: {exc}") from exc


def source_config(source: str | Path) -> ModelConfig:
    """The model config of a checkpoint directory or preset name, without loading weights."""
    directory = checkpoint_dir(source)
    return preset_config(str(source)) if directory is None else read_meta(directory)[1]


PLANNER_STAGES = (2, 3, 4)  # the stages that train the LLM's planning (paper stages 2-3, and 4)


def check_planner(source: str | Path) -> None:
    """Raise :class:`BadInputError` unless ``source`` has a trained planner: presets built in code
    have none (random or untrained LMGenDrive parts); a checkpoint whose ``config.json`` records
    its training stages needs one of :data:`PLANNER_STAGES` (older ones record none and pass)."""
    directory = checkpoint_dir(source)
    if directory is None:
        raise BadInputError(
            f"preset {source!s} has no trained planner (its LMGenDrive parts are untrained); "
            "give a trained checkpoint, e.g. demo"
        )
    stages = read_meta(directory)[0].get("trained_stages")
    if stages is not None and not set(stages) & set(PLANNER_STAGES):
        raise BadInputError(
            f"checkpoint {directory} has no trained planner: its weights went through training "
            f"stage(s) {stages}, the planner is trained in stages {list(PLANNER_STAGES)}"
        )


READERS = {  # the agents of `lmgd drive` that drive by the model's readers, and which ones
    "model_lane_assist": ("lane_reader",),
    "model_assisted": ("lane_reader", "light_reader"),
}


def check_readers(source: str | Path, agent: str) -> None:
    """Raise :class:`BadInputError` unless the model ``source`` names has the readers ``agent``
    drives by (:data:`READERS`; model ``vision.lane_reader`` / ``vision.light_reader``)."""
    vision = source_config(source).vision
    missing = [r for r in READERS.get(agent, ()) if not getattr(vision, r)]
    if missing:
        names = " and ".join(r.replace("_", " ") for r in missing)
        raise BadInputError(
            f"{source!s} has no {names}, which {agent} drives by: train them on it with "
            "stage 1's readers_only (jobs/train_readers.yaml)"
        )
