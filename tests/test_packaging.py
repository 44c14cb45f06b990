"""A non-editable install carries the embedded checkpoints and job specs and finds them without the
checkout (setup.py, schemas/shipped.py). Builds a wheel (about 50 MB, a few seconds) from a copy of
the working tree, so that no build folder appears in the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(
    ".git",
    ".venv",
    "out",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.partial",
    ".pytest_cache",
    ".ruff_cache",
    "tests",
    "bench",
    "docs",
)
EXPECTED = [
    "lmgendrive_data/jobs/demo.yaml",
    "lmgendrive_data/jobs/job.schema.json",
    *(
        f"lmgendrive_data/checkpoints/{name}/{f}"
        for name in ("demo", "evaluator")
        for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    ),
]

PROBE = """
import json, sys
import schemas
from lmgendrive.checkpoint import load_checkpoint
from lmgendrive.checkpoint_meta import EMBEDDED_DIR
from pipeline.cli import DEMO_JOB, _demo_job, main
from qa.config import resolve_evaluator
from schemas.job import SCHEMA_PATH, json_schema, load_job
from schemas.shipped import data_root

job = _demo_job(DEMO_JOB)
assert main(["job", "validate", str(job)]) == 0
_, identity = load_checkpoint(load_job(job).model, device="cpu")
print(json.dumps({"code": schemas.__file__, "root": str(data_root()), "job": str(job),
                  "checkpoints": str(EMBEDDED_DIR),
                  "evaluator": str(resolve_evaluator("checkpoints/evaluator")),
                  "schema_current": SCHEMA_PATH.read_text() == json_schema(),
                  "model": identity.model_id}))
"""


def test_the_wheel_ships_and_finds_the_demo_job_and_checkpoints(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    dist = tmp_path / "dist"
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("lmgendrive-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not [n for n in EXPECTED if n not in names]
    assert "pipeline/cli.py" in names and not [n for n in names if ".partial" in n]
    assert wheel.stat().st_size < 80 * 2**20  # two ~28 MB checkpoints, compressed

    site = tmp_path / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-compile", "--target", str(site), str(wheel)],
        check=True,
    )
    elsewhere = tmp_path / "elsewhere"  # a working directory with no jobs/ or checkpoints/
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONWARNINGS": "ignore"}
    r = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    found = json.loads(lines[-1])
    data = site / "lmgendrive_data"
    assert found["code"] == str(site / "schemas" / "__init__.py")  # installed, not the checkout
    assert found["root"] == str(data)
    assert found["job"] == str(data / "jobs" / "demo.yaml")
    assert found["checkpoints"] == str(data / "checkpoints")
    assert found["evaluator"] == str(data / "checkpoints" / "evaluator")
    assert found["schema_current"] and found["model"].startswith("lmgendrive-demo-")
    assert f"{data / 'jobs' / 'demo.yaml'}: ok (demo: model demo" in r.stdout
