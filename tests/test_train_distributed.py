"""Data-parallel training on CPU: two processes under torchrun, through accelerate (gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from lmgendrive.checkpoint import load_checkpoint

RECIPE = {
    "preset": "tiny",
    "data": {"towns": [1, 2], "frames": 40, "size": 32, "workers": 0},
    "stages": {"1": {"iterations": 6, "batch_size": 2, "lr": 1.0e-3, "checkpoint_every": 3},
               "2": {"iterations": 4, "batch_size": 2, "lr": 3.0e-4, "checkpoint_every": 2}},
}


def test_two_processes_train_as_one_group_and_rank_zero_writes(tmp_path):
    recipe = {**RECIPE, "workdir": str(tmp_path / "work"), "output": str(tmp_path / "ckpt")}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "pipeline.cli", "train", "--stage", "all",
                           "--config", str(path)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained stage(s)") == 1  # rank 0 only
    for stage, its in (("1", 6), ("2", 4)):
        progress = json.loads((tmp_path / "work" / f"stage{stage}" / "state" / "trainer.json").read_text())["progress"]
        assert progress["step"] == its and progress["samples"] == its * 2 * 2  # both ranks' batches counted
        rows = (tmp_path / "work" / f"stage{stage}" / "log.jsonl").read_text().splitlines()
        assert [json.loads(r)["step"] for r in rows] == list(range(1, its + 1))  # one log, not two
    model = load_checkpoint(tmp_path / "ckpt", "cpu")
    assert model.config.preset == "tiny"
