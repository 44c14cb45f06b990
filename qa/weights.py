"""Finding the reference extractors' weight files on disk; nothing is ever downloaded.

Search order for a file: the job's ``qa.weights_dir`` (or ``--weights-dir``), then
``$LMGD_WEIGHTS_DIR``, then ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch`` when ``TORCH_HOME``
is unset), which is where pytorch-fid and torch.hub would have cached a download.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import CheckpointError

WEIGHTS_ENV = "LMGD_WEIGHTS_DIR"


@dataclass(frozen=True)
class WeightsFile:
    """A published weights file: its name, what it is for and where to get it."""

    name: str
    purpose: str
    published: str


INCEPTION = WeightsFile(
    "pt_inception-2015-12-05-6726825d.pth",
    "the FID Inception-v3 (pytorch-fid port of the TF 2015-12-05 graph)",
    "https://github.com/mseitzer/pytorch-fid/releases (release 'fid_weights')",
)
I3D_TORCHSCRIPT = WeightsFile(
    "i3d_torchscript.pt",
    "the FVD I3D (StyleGAN-V TorchScript of the TF-Hub Kinetics-400 I3D)",
    "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt "
    "(linked from universome/stylegan-v)",
)
I3D_STATE_DICT = WeightsFile(
    "i3d_pretrained_400.pt",
    "the FVD I3D (VideoGPT / cd-fvd state dict of piergiaj's PyTorch I3D)",
    "https://github.com/songweige/TATS/raw/main/tats/fvd/i3d_pretrained_400.pt "
    "(used by cd-fvd and VideoGPT)",
)


def search_dirs(weights_dir: str | Path | None = None) -> list[Path]:
    """The directories searched, in order."""
    dirs = [Path(weights_dir).expanduser()] if weights_dir else []
    if os.environ.get(WEIGHTS_ENV):
        dirs.append(Path(os.environ[WEIGHTS_ENV]).expanduser())
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch"
    )
    dirs.append(Path(torch_home).expanduser() / "hub" / "checkpoints")
    return dirs


def find_weights(
    choices: tuple[WeightsFile, ...], weights_dir: str | Path | None = None
) -> tuple[Path, WeightsFile]:
    """The first of ``choices`` found in :func:`search_dirs` (directory order first, then choice
    order); :class:`CheckpointError` naming the files, the directories and where they are
    published."""
    dirs = search_dirs(weights_dir)
    for d in dirs:
        for choice in choices:
            if (d / choice.name).is_file():
                return d / choice.name, choice
    wanted = " or ".join(c.name for c in choices)
    sources = "; ".join(f"{c.name}: {c.purpose}, published at {c.published}" for c in choices)
    raise CheckpointError(
        f"{wanted} not found in {', '.join(map(str, dirs))}. "
        "Put the file in one of these directories "
        f"(set qa.weights_dir in the job, --weights-dir, or ${WEIGHTS_ENV}); "
        f"nothing is downloaded. {sources}"
    )
