"""Data-parallel training on CPU: two processes under torchrun, through accelerate (gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from lmgendrive.checkpoint import load_checkpoint
from lmgendrive.train.runner import TOKEN_CACHE_FILE

RECIPE = {
    "preset": "tiny",
    "data": {"towns": [1, 2], "frames": 40, "size": 32, "workers": 0},
    "stages": {
        "1": {"iterations": 6, "batch_size": 2, "lr": 1.0e-3, "checkpoint_every": 3},
        "2": {
            "iterations": 4,
            "batch_size": 2,
            "lr": 3.0e-4,
            "checkpoint_every": 2,
            "planner": {"batch_size": 2, "routes_per_town": 2, "token_cache": True},
        },
    },
}


def test_two_processes_train_as_one_group_and_rank_zero_writes(tmp_path):
    recipe = {
        **RECIPE,
        "workdir": str(tmp_path / "work"),
        "output": str(tmp_path / "ckpt"),
        "data": {**RECIPE["data"], "cache": str(tmp_path / "scenes")},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "-m",
            "pipeline.cli",
            "train",
            "--stage",
            "all",
            "--config",
            str(path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained stage(s)") == 1  # rank 0 only
    for stage, its in (("1", 6), ("2", 4)):
        progress = json.loads(
            (tmp_path / "work" / f"stage{stage}" / "state" / "trainer.json").read_text()
        )["progress"]
        assert (
            progress["step"] == its and progress["samples"] == its * 2 * 2
        )  # both ranks' batches counted
        rows = (tmp_path / "work" / f"stage{stage}" / "log.jsonl").read_text().splitlines()
        assert [json.loads(r)["step"] for r in rows] == list(range(1, its + 1))  # one log, not two
    # rank 0 rendered the drives (the planner's second routes too) and the token cache; rank 1 read
    # them
    drives = sorted(p.name for p in (tmp_path / "scenes").iterdir() if p.is_dir())
    assert len(drives) == 4 and not any(name.endswith(".partial") for name in drives)
    assert (tmp_path / "work" / TOKEN_CACHE_FILE).is_file()
    model, _ = load_checkpoint(tmp_path / "ckpt", "cpu")
    assert model.config.preset == "tiny"
