"""Where the files shipped with lmgendrive are: the embedded checkpoints and the example job specs.

In a checkout (run from source, or an editable install) they are its ``checkpoints/`` and ``jobs/``.
A wheel (``pip install .``) carries copies of both in the data package ``lmgendrive_data``
(``site-packages/lmgendrive_data/checkpoints/demo``, ``.../jobs/demo.yaml``; see ``setup.py``),
found with :mod:`importlib.resources`. Either way :func:`data_root` is the folder holding both, so a
relative path such as ``jobs/demo.yaml`` or ``checkpoints/evaluator`` resolves under it.

It lives in ``schemas/``, the bottom room, because every room needs it (``schemas.job`` for the job
JSON Schema, ``lmgendrive`` for the embedded checkpoint, ``qa`` for the evaluator, ``pipeline`` for
the demo job) and it imports nothing but the standard library.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

DATA_PACKAGE = "lmgendrive_data"
CHECKOUT = Path(__file__).resolve().parents[1]
_MARKER = Path("jobs") / "job.schema.json"


@functools.cache
def data_root() -> Path:
    """The folder holding ``checkpoints/`` and ``jobs/``: the checkout when these modules run from
    one, else the installed :data:`DATA_PACKAGE`; the checkout (where errors will name the missing
    files) when neither has them."""
    if (CHECKOUT / _MARKER).is_file():
        return CHECKOUT
    try:
        installed = Path(str(resources.files(DATA_PACKAGE)))
    except ModuleNotFoundError:
        return CHECKOUT
    return installed if (installed / _MARKER).is_file() else CHECKOUT


def shipped(relative: str | Path) -> Path:
    """``relative`` (e.g. ``jobs/demo.yaml``) under :func:`data_root`."""
    return data_root() / relative
