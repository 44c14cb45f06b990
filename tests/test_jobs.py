"""Job specs: the committed jobs validate, bad specs exit 2 naming the key or file."""

import glob
import json
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from schemas.job import SCHEMA_PATH, json_schema, load_job

JOBS = sorted(
    p for p in glob.glob("jobs/*.yaml") if not Path(p).name.startswith("train_")
)  # recipes


def test_committed_jobs_validate(capsys):
    assert {"jobs/demo.yaml", "jobs/horizon_scaling.yaml", "jobs/corner_cases.yaml"} <= set(JOBS)
    assert main(["job", "validate", *JOBS]) == 0
    assert capsys.readouterr().out.count(": ok (") == len(JOBS)
    assert load_job("jobs/horizon_scaling.yaml").horizons == [8, 16, 24, 32, 64, 128]


def test_json_schema_file_is_current():
    assert SCHEMA_PATH.read_text() == json_schema()
    schema = json.loads(json_schema())
    assert "horizons" in schema["properties"] and schema["additionalProperties"] is False


def _job(tmp_path, edit):
    data = yaml.safe_load(Path("jobs/demo.yaml").read_text())
    data["output"] = str(tmp_path / "out")  # not the checkout's out/demo, which make demo fills
    edit(data)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _set(path, value):
    def edit(d):
        node = d
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(horizns=[8]), "unknown key 'horizns' (did you mean 'horizons'?)"),
        (
            lambda d: d["sampler"].update(stpes=10),
            "unknown key 'sampler.stpes' (did you mean 'steps'?)",
        ),
        (
            lambda d: d["sampler"].update(guidance_scale=2.0),
            "unknown key 'sampler.guidance_scale' (did you mean 'guidance'?)",
        ),
        (
            _set(["sampler", "guidance"], 0.5),
            "sampler.guidance: Input should be greater than or equal to 1",
        ),
        (
            _set(["sampler", "steps"], 1),  # x the demo checkpoint's strength 0.3
            "sampler: strength x steps must leave at least one denoising step, got 0.3 x 1",
        ),
        (
            lambda d: d.update(seed=3),
            "unknown key 'seed' (it belongs under manifest.build or manifest.curate)",
        ),
        (
            lambda d: d.update(stages={"2": {}}),
            "this looks like a training recipe (it has 'stages'): train it with `lmgd train",
        ),
        (
            _set(["horizons"], [8, 12]),
            "horizons: [12] are not positive multiples of 8, the frames per",
        ),
        (_set(["horizons"], [8, -8]), "horizon(s) [-8] are not positive"),
        (_set(["horizons"], [8, 256]), "horizon 256 needs 264 recorded frames"),
        (
            _set(["manifest"], {"path": "nowhere/tasks.parquet"}),
            "nowhere/tasks.parquet: manifest not found",
        ),
        (
            _set(["manifest"], {"build": {"source": "lmdrive", "root": "/no/such/root"}}),
            "/no/such/root/dataset_index.txt: dataset index not found",
        ),
        (
            _set(["model"], "checkpoints/missing"),
            "model 'checkpoints/missing': no such checkpoint directory",
        ),
        (_set(["manifest", "build", "weathers"], ["snow"]), "unknown weather(s) ['snow']"),
        (_set(["output"], "s3://Bad_Bucket"), "not a valid s3://bucket/prefix URI"),
    ],
)
def test_bad_job_exits_2_naming_the_key_or_file(tmp_path, capsys, edit, message):
    path = _job(tmp_path, edit)
    assert main(["job", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err


def test_manifest_beyond_ground_truth_names_the_row(tmp_path, capsys):
    from manifests.build import build
    from manifests.io import write_manifest
    from schemas.job import ProceduralRecipe

    table = build(ProceduralRecipe(towns=[3], frames=40, stride=10), [16]).to_pylist()
    table[1]["start_frame"] = 30  # 30 + 16 > 40 recorded frames
    import pyarrow as pa

    from schemas.tables import TASK

    m = write_manifest(pa.Table.from_pylist(table, schema=TASK.arrow), tmp_path / "m.parquet")
    path = _job(tmp_path, lambda d: (d.update(manifest={"path": str(m)}), d.update(horizons=[16])))
    assert main(["job", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "row 1" in err and "beyond the 40 recorded frames" in err


def test_unreadable_scene_root(tmp_path, capsys):
    root = tmp_path / "root"
    root.mkdir()
    (root / "dataset_index.txt").write_text("route_a/ 100\n")
    path = _job(tmp_path, _set(["manifest"], {"build": {"source": "lmdrive", "root": str(root)}}))
    assert main(["job", "validate", str(path)]) == 2
    assert "route_a" in capsys.readouterr().err


def test_horizons_are_whole_steps_of_the_jobs_model(tmp_path, capsys):
    from lmgendrive.checkpoint import build_untrained, save_checkpoint
    from lmgendrive.config import preset_config

    checkpoint = tmp_path / "four"
    four = preset_config("tiny").model_copy(update={"frames_per_step": 4})
    save_checkpoint(build_untrained(four), checkpoint)
    path = _job(tmp_path, lambda d: d.update(model=str(checkpoint), horizons=[4, 12]))
    assert main(["job", "validate", str(path)]) == 0
    path = _job(tmp_path, lambda d: d.update(model=str(checkpoint), horizons=[8, 6]))
    assert main(["job", "validate", str(path)]) == 2
    assert "horizons: [6] are not positive multiples of 4" in capsys.readouterr().err
