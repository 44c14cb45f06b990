"""Packaging beyond pyproject.toml: a wheel carries the shipped data.

``checkpoints/`` (the embedded demo checkpoint and the FD-drive evaluator) and ``jobs/`` (the
example job specs and their JSON Schema) stay at the top of the checkout; ``build_py`` copies them
into the wheel as the data package ``lmgendrive_data``, where :func:`schemas.shipped.data_root`
finds them when the checkout is not there. Editable installs read the checkout and get no copy.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA_PACKAGE = "lmgendrive_data"
SHIPPED = {  # folder -> the files of it that go into the wheel
    "checkpoints": [
        "README.md",
        "*/README.md",
        "*/config.json",
        "*/model.safetensors",
        "*/tokenizer*.json",
        "*/loss_stage*.png",
    ],
    "jobs": ["*.yaml", "*.json", "*.md"],
}
INIT = '"""The files shipped with lmgendrive: checkpoints/ and jobs/ (see schemas/shipped.py)."""\n'


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        here = Path(__file__).resolve().parent
        target = Path(self.build_lib) / DATA_PACKAGE
        self.mkpath(str(target))
        (target / "__init__.py").write_text(INIT)
        for folder, patterns in SHIPPED.items():
            for pattern in patterns:
                for src in sorted((here / folder).glob(pattern)):
                    rel = src.relative_to(here)
                    if src.is_file() and not any(p.endswith(".partial") for p in rel.parts):
                        self.mkpath(str((target / rel).parent))
                        self.copy_file(str(src), str(target / rel))


setup(cmdclass={"build_py": BuildPyWithData})
