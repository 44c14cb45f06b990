"""``lmgd job validate`` of a training recipe: everything ``lmgd train`` would refuse, found
before anything is loaded, rendered or written (the recipe's keys, the model config it sets, the
pretrained component files it names, the LMDrive data root it reads)."""

from __future__ import annotations

from pathlib import Path

from lmgendrive.pretrained import component_dirs
from lmgendrive.train.config import load_config
from scenes.lmdrive.scene import open_root


def check_recipe(path: str | Path) -> str:
    """A one-line summary of a valid recipe; the first problem raises a
    :class:`~schemas.errors.BadInputError` naming the key or file."""
    config = load_config(path)
    model = config.network_config()
    named = model.pretrained.named()
    if named:
        component_dirs(model)
    data = config.data
    source = "procedural towns"
    if data.lmdrive_root is not None:
        scenes = open_root(data.lmdrive_root)
        source = f"{len(scenes)} LMDrive route(s) in {data.lmdrive_root}"
    stages = ", ".join(f"{s}: {config.stage(s).iterations} it" for s in config.stage_numbers())
    return (
        f"{path}: ok (training recipe: preset {config.preset}, "
        f"pretrained {', '.join(named) or 'none'}, {source}, stages {stages}, "
        f"compute {config.precision.compute or 'the model dtype'}, output {config.output})"
    )
