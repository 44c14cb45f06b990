"""Every bad input: exit code 2 (1 for damaged outputs), a message naming the culprit and what is
valid, no traceback, and the file system exactly as it was (no ``.partial``, no half output).

One table across the verbs, run in-process through the CLI's entry function. Each case prepares
its own inputs in its folder under a shared world (a tiny job, manifest, checkpoint and route),
then the whole world is snapshotted before and compared after the command.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from pipeline_helpers import TINY_BUILD, tiny_job

from pipeline.cli import main

SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYzz9SECRET"


@dataclass(frozen=True)
class World:
    root: Path
    manifest: Path  # 4 tasks of TINY_BUILD at horizon 8
    checkpoint: Path  # the tiny model, saved
    routes: Path  # an LMDrive root with one 12-frame route


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    from lmgendrive.checkpoint import build_untrained, save_checkpoint

    root = tmp_path_factory.mktemp("bad-inputs")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(TINY_BUILD))
    manifest = root / "manifest.parquet"
    assert (
        main(
            [
                "manifest",
                "build",
                "--recipe",
                str(recipe),
                "--horizons",
                "8",
                "--out",
                str(manifest),
            ]
        )
        == 0
    )
    checkpoint = root / "tiny-checkpoint"
    save_checkpoint(build_untrained("tiny"), checkpoint)
    routes = root / "routes"
    assert (
        main(
            [
                "scenes",
                "render",
                "--town-seed",
                "2",
                "--route-seed",
                "1",
                "--frames",
                "12",
                "--size",
                "32",
                "--out",
                str(routes),
            ]
        )
        == 0
    )
    (root / "cases").mkdir()
    return World(root, manifest, checkpoint, routes)


# ----------------------------------------------------------------------------- case builders
def job_data(d: Path) -> dict:
    """The tiny job as plain data, writing into ``d/out``."""
    return tiny_job(str(d / "out")).model_dump(mode="json", exclude_none=True)


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def job_with(**changes) -> Callable[[World, Path], Path]:
    """A job file with top-level keys replaced (``None`` removes a key)."""

    def make(w: World, d: Path) -> Path:
        data = job_data(d)
        for k, v in changes.items():
            if v is None:
                data.pop(k, None)
            else:
                data[k] = v(w, d) if callable(v) else v
        return write_yaml(d / "job.yaml", data)

    return make


def raw_job(text: str | bytes) -> Callable[[World, Path], Path]:
    def make(w: World, d: Path) -> Path:
        path = d / "job.yaml"
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
        return path

    return make


def manifest_rows(w: World, d: Path, edit: Callable[[list[dict]], list[dict]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = edit(pq.read_table(w.manifest).to_pylist())
    path = d / "edited.parquet"
    schema = pq.read_schema(w.manifest)
    pq.write_table(
        pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table(), path
    )
    return path


def with_manifest(edit: Callable[[list[dict]], list[dict]]) -> Callable[[World, Path], Path]:
    return job_with(manifest=lambda w, d: {"path": str(manifest_rows(w, d, edit))})


def set_row(**values) -> Callable[[list[dict]], list[dict]]:
    return lambda rows: [{**rows[0], **values}, *rows[1:]]


def checkpoint_copy(edit: Callable[[Path], None]) -> Callable[[World, Path], Path]:
    """A job whose model is a copy of the tiny checkpoint, edited."""

    def model(w: World, d: Path) -> str:
        ckpt = d / "ckpt"
        shutil.copytree(w.checkpoint, ckpt)
        edit(ckpt)
        return str(ckpt)

    return job_with(model=model)


def truncate_weights(ckpt: Path) -> None:
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])


def truncate_unrecorded(ckpt: Path) -> None:
    truncate_weights(ckpt)
    edit_meta(ckpt, lambda m: m.pop("weights_sha256"))


def edit_meta(ckpt: Path, edit: Callable[[dict], object]) -> None:
    meta = json.loads((ckpt / "config.json").read_text())
    edit(meta)
    (ckpt / "config.json").write_text(json.dumps(meta))


def wider_model(ckpt: Path) -> None:
    def edit(meta):
        meta["config"]["vae"]["latent_channels"] += 1
        meta.pop("weights_sha256")

    edit_meta(ckpt, edit)


def output_holding(files: dict[str, str]) -> Callable[[World, Path], Path]:
    """The tiny job, its output folder already holding ``files``."""

    def make(w: World, d: Path) -> Path:
        for name, text in files.items():
            (d / "out" / name).parent.mkdir(parents=True, exist_ok=True)
            (d / "out" / name).write_text(text)
        return job_with()(w, d)

    return make


def other_job_output(w: World, d: Path) -> Path:
    data = job_data(d)
    (d / "out").mkdir()
    write_yaml(d / "out" / "job.yaml", {**data, "horizons": [16]})
    return write_yaml(d / "job.yaml", data)


def other_weights_output(w: World, d: Path) -> Path:
    """An output made from the same checkpoint path when it held other weights."""
    data = {**job_data(d), "model": str(w.checkpoint)}
    (d / "out").mkdir()
    write_yaml(d / "out" / "job.yaml", {**data, "model_sha256": "0" * 64})
    return write_yaml(d / "job.yaml", data)


def lmdrive_route_with(frame_file: Callable[[Path], None]) -> Callable[[World, Path], Path]:
    """A job on a copy of the world's route whose seed frame 1 (front view) is replaced."""

    def make(w: World, d: Path) -> Path:
        shutil.copytree(w.routes, d / "routes")
        route = next(p for p in (d / "routes").iterdir() if p.is_dir())
        frame_file(route / "rgb_front" / "0001.png")
        build = {"source": "lmdrive", "root": str(d / "routes"), "seed_frames": 2, "stride": 4}
        return job_with(manifest={"build": build}, horizons=[8])(w, d)

    return make


def not_an_image(path: Path) -> None:
    path.write_bytes(b"this is not a PNG")


def smaller_image(path: Path) -> None:
    import cv2
    import numpy as np

    cv2.imwrite(str(path), np.zeros((16, 16, 3), np.uint8))


def file(text: str, name: str = "file") -> Callable[[World, Path], Path]:
    def make(w: World, d: Path) -> Path:
        (d / name).write_text(text)
        return d / name

    return make


def folder(name: str = "folder") -> Callable[[World, Path], Path]:
    def make(w: World, d: Path) -> Path:
        (d / name).mkdir()
        return d / name

    return make


# ----------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[World, Path], list[str]]
    fragment: str
    code: int = 2


def job_cases(verb: list[str]) -> list[Case]:
    """Job-spec problems, each run through ``verb`` (validate and generate refuse alike)."""

    def run(make):
        return lambda w, d: [*verb, str(make(w, d))]

    prefix = "-".join(verb)
    cases = [
        ("missing", lambda w, d: d / "nope.yaml", "job spec not found"),
        ("directory", folder("job.yaml"), "job spec a directory"),
        ("random-bytes", raw_job(bytes(range(256)) * 4), "not a text file"),
        ("bad-yaml", raw_job("name: [tiny\n"), "not valid YAML"),
        ("duplicate-key", raw_job("name: a\nmodel: tiny\nname: b\n"), "duplicate key 'name'"),
        ("a-list", raw_job("- name\n- model\n"), "a job spec is a mapping"),
        ("typo-key", job_with(horizon=[8]), "did you mean 'horizons'"),
        ("no-model", job_with(model=None), "model"),
        ("horizon-not-step", job_with(horizons=[8, 12]), "not positive multiples of 8"),
        ("horizon-negative", job_with(horizons=[-8]), "not positive"),
        ("unknown-preset", job_with(model="huge"), "not a preset"),
        (
            "no-weights",
            checkpoint_copy(lambda c: (c / "model.safetensors").unlink()),
            "missing model.safetensors",
        ),
        ("truncated-weights", checkpoint_copy(truncate_weights), "corrupt or was replaced"),
        (
            "truncated-unrecorded",
            checkpoint_copy(truncate_unrecorded),
            "not a readable safetensors",
        ),
        ("mis-shaped-weights", checkpoint_copy(wider_model), "wrong shape"),
        (
            "config-not-json",
            checkpoint_copy(lambda c: (c / "config.json").write_text("{")),
            "not valid JSON",
        ),
        (
            "unknown-weather",
            job_with(manifest={"build": {**TINY_BUILD, "weathers": ["hail"]}}),
            "unknown weather",
        ),
        ("no-ground-truth", job_with(horizons=[40]), "recorded frames"),
        ("manifest-missing", job_with(manifest={"path": "nope.parquet"}), "manifest not found"),
        (
            "manifest-csv",
            job_with(manifest=lambda w, d: {"path": str(file("a,b")(w, d))}),
            "unknown manifest format",
        ),
        ("manifest-empty", with_manifest(lambda rows: []), "no task"),
        ("manifest-nan-speed", with_manifest(set_row(speed=float("nan"))), "column 'speed'"),
        (
            "manifest-start-before-seeds",
            with_manifest(set_row(start_frame=2)),
            "start_frame >= seed_frames",
        ),
        (
            "manifest-other-horizon",
            with_manifest(lambda r: [{**x, "horizon": 24} for x in r]),
            "no task has one of the job's horizons",
        ),
        (
            "manifest-duplicate-task",
            with_manifest(lambda rows: [rows[0], rows[0]]),
            "duplicates row 0",
        ),
        (
            "manifest-not-parquet",
            job_with(manifest=lambda w, d: {"path": str(file("PAR1junk", "m.parquet")(w, d))}),
            "not a readable Parquet",
        ),
        (
            "manifest-missing-route",
            with_manifest(set_row(scene_source="lmdrive", scene_ref="/nonexistent/route")),
            "row 0",
        ),
        (
            "lmdrive-root-missing",
            job_with(manifest={"build": {"source": "lmdrive", "root": "/nonexistent/root"}}),
            "/nonexistent/root",
        ),
        (
            "seed-frame-not-an-image",
            lmdrive_route_with(not_an_image),
            "rgb_front/0001.png: not a readable image",
        ),
        (
            "seed-frame-wrong-size",
            lmdrive_route_with(smaller_image),
            "image is 16x16 pixels, the route's frames are 32x32",
        ),
        (
            "output-is-a-file",
            job_with(output=lambda w, d: str(file("x")(w, d))),
            "the output is a file",
        ),
        (
            "output-under-a-file",
            job_with(output=lambda w, d: str(file("x")(w, d) / "out")),
            "is a file",
        ),
        (
            "output-holds-user-files",
            output_holding({"thesis.tex": "mine", "data/a.bin": "x"}),
            "which no job writes",
        ),
        (
            "output-holds-other-job",
            other_job_output,
            "horizons: output has [16], this job [8, 16]",
        ),
        (
            "output-of-other-weights",
            other_weights_output,
            "model_sha256: output has '" + "0" * 64,
        ),
        (
            "pinned-weights-differ",
            job_with(model=lambda w, d: str(w.checkpoint), model_sha256="0" * 64),
            "model_sha256 pins the weights " + "0" * 64,
        ),
        (
            "output-garbage-job-yaml",
            output_holding({"job.yaml": "- just\n- a list\n"}),
            "not a job spec written by lmgd",
        ),
        (
            "endpoint-with-credentials",
            job_with(
                output="s3://bucket/x",
                storage={"endpoint_url": f"http://AKIDEXAMPLE:{SECRET}@127.0.0.1:1"},
            ),
            "carries credentials",
        ),
        (
            "s3-uri-with-credentials",
            job_with(output=f"s3://AKIDEXAMPLE:{SECRET}@bucket/x"),
            "not a valid s3://bucket/prefix",
        ),
        ("unsupported-scheme", job_with(output="gs://bucket/x"), "unsupported scheme"),
        (
            "curate-bad-regex",
            job_with(manifest={"build": TINY_BUILD, "curate": {"text": "("}}),
            "not a valid regular expression",
        ),
        (
            "curate-leaves-nothing",
            job_with(manifest={"build": TINY_BUILD, "curate": {"text": "^no such words$"}}),
            "left no task",
        ),
        ("zero-workers", job_with(resources={"workers": 0}), "resources.workers"),
    ]
    if verb == ["generate"]:  # `job validate` checks a recipe as a recipe
        cases.append(
            ("training-recipe", lambda w, d: Path("jobs/train_demo.yaml"), "training recipe")
        )
    return [Case(f"{prefix}-{name}", run(make), frag) for name, make, frag in cases]


def route_file(start: str, turns: str) -> Callable[[World, Path], Path]:
    """A closed-loop route file with one route in town 971 leaving ``start`` heading east."""
    route = f"{{route_id: r, town: 971, start: {start}, heading: east, turns: {turns}}}"
    return file(f"routes:\n  - {route}\n", "routes.yaml")


def argv(*parts) -> Callable[[World, Path], list[str]]:
    """Arguments where a callable part is made in the case's folder."""
    return lambda w, d: [str(p(w, d)) if callable(p) else p for p in parts]


def at(rel: str) -> Callable[[World, Path], Path]:
    return lambda w, d: d / rel


def the(name: str) -> Callable[[World, Path], Path]:
    return lambda w, d: getattr(w, name)


def nan_manifest(w: World, d: Path) -> Path:
    return manifest_rows(w, d, set_row(speed=float("nan")))


BUILD = ["manifest", "build", "--horizons", "8"]
CURATE = ["manifest", "curate"]
RENDER_SCENE = ["scenes", "render", "--town-seed", "1", "--route-seed", "1"]
RENDER = [*RENDER_SCENE, "--frames", "4"]

OTHER_CASES = [
    # manifest build
    Case("build-out-is-a-folder", argv(*BUILD, "--out", folder()), "is a directory"),
    Case("build-out-csv", argv(*BUILD, "--out", at("m.csv")), "give a .parquet name"),
    Case(
        "build-out-under-a-file",
        argv(*BUILD, "--out", lambda w, d: file("x")(w, d) / "m.parquet"),
        "is a file, not a folder",
    ),
    Case(
        "build-horizon-zero",
        argv("manifest", "build", "--horizons", "0", "--out", at("m.parquet")),
        "horizons must be positive",
    ),
    Case(
        "build-recipe-missing",
        argv(*BUILD, "--recipe", at("r.yaml"), "--out", at("m.parquet")),
        "recipe not found",
    ),
    Case(
        "build-recipe-duplicate-key",
        argv(
            *BUILD, "--recipe", file("frames: 40\nframes: 50\n", "r.yaml"), "--out", at("m.parquet")
        ),
        "duplicate key 'frames'",
    ),
    Case(
        "build-recipe-a-list",
        argv(*BUILD, "--recipe", file("- 1\n", "r.yaml"), "--out", at("m.parquet")),
        "a recipe is a mapping",
    ),
    Case(
        "build-unknown-weather",
        argv(*BUILD, "--weathers", "hail", "--out", at("m.parquet")),
        "unknown weather",
    ),
    Case(
        "build-lmdrive-with-towns",
        argv(*BUILD, "--lmdrive", the("routes"), "--towns", "1", "--out", at("m.parquet")),
        "applies to procedural recipes only",
    ),
    Case(
        "build-lmdrive-missing",
        argv(*BUILD, "--lmdrive", at("nowhere"), "--out", at("m.parquet")),
        "nowhere",
    ),
    Case(
        "build-frames-zero",
        argv(*BUILD, "--frames", "0", "--out", at("m.parquet")),
        "--frames must be >= 1",
    ),
    # manifest curate
    Case(
        "curate-unknown-category",
        argv(*CURATE, the("manifest"), "--category", "bogus", "--out", at("c.parquet")),
        "--category",
    ),
    Case(
        "curate-bad-regex",
        argv(*CURATE, the("manifest"), "--text", "(", "--out", at("c.parquet")),
        "not a valid regular expression",
    ),
    Case(
        "curate-input-missing",
        argv(*CURATE, at("none.parquet"), "--out", at("c.parquet")),
        "manifest not found",
    ),
    Case(
        "curate-out-is-a-folder",
        argv(*CURATE, the("manifest"), "--out", folder()),
        "is a directory",
    ),
    Case(
        "curate-leaves-nothing",
        argv(*CURATE, the("manifest"), "--text", "^no such words$", "--out", at("c.parquet")),
        "passes this curation",
    ),
    Case(
        "curate-sample-zero",
        argv(*CURATE, the("manifest"), "--sample", "0", "--out", at("c.parquet")),
        "--sample must be >= 1",
    ),
    Case(
        "curate-input-nan-speed",
        argv(*CURATE, nan_manifest, "--out", at("c.parquet")),
        "column 'speed'",
    ),
    # manifest stats
    Case("stats-missing", argv("manifest", "stats", at("none.parquet")), "manifest not found"),
    Case(
        "stats-not-parquet",
        argv("manifest", "stats", file("junk", "m.parquet")),
        "not a readable Parquet",
    ),
    Case("stats-txt", argv("manifest", "stats", file("junk", "m.txt")), "unknown manifest format"),
    Case("stats-nan-speed", argv("manifest", "stats", nan_manifest), "column 'speed'"),
    Case(
        "stats-bad-jsonl-line",
        argv("manifest", "stats", file("{}\n{oops\n", "m.jsonl")),
        "m.jsonl:2: not valid JSON",
    ),
    # scenes render
    Case(
        "render-unknown-weather",
        argv(*RENDER, "--weather", "hail", "--out", at("r")),
        "unknown weather 'hail'; valid: clear_noon, cloudy",
    ),
    Case(
        "render-size-too-small", argv(*RENDER, "--size", "8", "--out", at("r")), "16 <= N <= 1024"
    ),
    Case("render-unknown-turn", argv(*RENDER, "--turns", "sideways", "--out", at("r")), "sideways"),
    Case("render-out-is-a-file", argv(*RENDER, "--out", file("x")), "is a file"),
    Case(
        "render-frames-zero",
        argv(*RENDER_SCENE, "--frames", "0", "--out", at("r")),
        "--frames must be >= 1",
    ),
    # scenes sheet
    Case(
        "sheet-missing",
        argv("scenes", "sheet", at("nowhere"), "--out", at("s.png")),
        "no such route folder",
    ),
    Case(
        "sheet-out-is-a-folder",
        argv("scenes", "sheet", the("routes"), "--out", folder()),
        "is a directory",
    ),
    Case(
        "sheet-out-jpg",
        argv("scenes", "sheet", the("routes"), "--out", at("s.jpg")),
        "give a .png name",
    ),
    Case(
        "sheet-not-a-route", argv("scenes", "sheet", folder("empty"), "--out", at("s.png")), "empty"
    ),
    Case(
        "sheet-frames-zero",
        argv("scenes", "sheet", the("routes"), "--frames", "0", "--out", at("s.png")),
        "--frames must be >= 1",
    ),
    # inspect
    Case("inspect-missing", argv("inspect", at("nowhere")), "nowhere"),
    Case("inspect-s3-no-bucket", argv("inspect", "s3://"), "no bucket"),
    Case(
        "inspect-s3-unreachable",
        argv("inspect", "s3://bucket/x", "--endpoint-url", "http://127.0.0.1:9"),
        "cannot reach the S3 endpoint",
    ),
    Case("inspect-unsupported-scheme", argv("inspect", "gs://bucket/x"), "unsupported scheme"),
    Case(
        "inspect-credentials-in-uri",
        argv("inspect", "s3://bucket/x", "--endpoint-url", f"http://AKID:{SECRET}@127.0.0.1:9"),
        "carries credentials",
    ),
    # qa
    Case(
        "qa-generated-missing",
        argv("qa", "--generated", at("nowhere"), "--out", at("qa")),
        "nowhere",
    ),
    Case("qa-no-job-nor-output", argv("qa"), "JOB"),
    Case("qa-job-missing", argv("qa", at("none.yaml")), "job spec not found"),
    # train
    Case(
        "train-config-missing",
        argv("train", "--stage", "all", "--config", at("t.yaml")),
        "training recipe not found",
    ),
    Case(
        "train-config-duplicate-key",
        argv("train", "--stage", "all", "--config", file("seed: 0\nseed: 1\n", "t.yaml")),
        "duplicate key 'seed'",
    ),
    Case(
        "train-config-is-a-job",
        argv("train", "--stage", "all", "--config", lambda w, d: job_with()(w, d)),
        "stages",
    ),
    Case(
        "train-unknown-stage",
        argv("train", "--stage", "7", "--config", "jobs/train_demo.yaml"),
        "--stage must be",
    ),
    # drive
    Case(
        "drive-route-without-path-to-goal",
        argv("drive", "--route-file", route_file("[1, 0]", "[right]"), "--out", at("drive")),
        "no path to the goal: turn 1 ('right') at junction [2, 0]",
    ),
    Case(
        "drive-unknown-instruction-id",
        argv("drive", "--route-file", route_file("[0, 0]", "[left, 99]"), "--out", at("drive")),
        "routes[0].turns[1]: unknown instruction id 99",
    ),
    Case(
        "drive-checkpoint-without-planner",
        argv("drive", "--track", "tiny", "--checkpoint", "checkpoints/evaluator", "--out", at("d")),
        "has no trained planner",
    ),
    Case(
        "drive-preset-without-planner",
        argv("drive", "--track", "tiny", "--checkpoint", "tiny", "--out", at("drive")),
        "preset tiny has no trained planner",
    ),
    Case(
        "drive-unknown-agent",
        argv("drive", "--track", "tiny", "--agents", "flyer", "--out", at("drive")),
        "unknown agent(s) ['flyer']; valid: expert, label_oracle, lane_keeping, model",
    ),
]

GENERATE_ONLY = [
    Case(
        "generate-overwrite-user-files",
        lambda w, d: [
            "generate",
            str(output_holding({"notes.txt": "mine"})(w, d)),
            "--executor",
            "local",
            "--overwrite",
        ],
        "--overwrite removes only what a job writes",
    ),
    Case(
        "generate-more-gpus-than-the-machine",
        lambda w, d: ["generate", str(job_with(resources={"gpus_per_worker": 4})(w, d))],
        "gpus_per_worker: 0",
    ),
]

CASES = [
    *job_cases(["job", "validate"]),
    *[
        Case(c.id, lambda w, d, c=c: [*c.argv(w, d), "--executor", "local"], c.fragment, c.code)
        for c in job_cases(["generate"])
    ],
    *GENERATE_ONLY,
    *OTHER_CASES,
]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root``: kind, size and content time."""
    return {
        str(p.relative_to(root)): (p.is_dir(), p.is_dir() or p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
    }


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case: Case, world: World, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    d = world.root / "cases" / case.id
    d.mkdir()
    args = case.argv(world, d)
    before = snapshot(world.root)
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out, err = capsys.readouterr()
    assert code == case.code, f"exit {code}: {err}"
    assert case.fragment in err, err
    assert "Traceback" not in out + err
    assert SECRET not in out + err
    assert snapshot(world.root) == before
