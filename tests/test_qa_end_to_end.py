"""QA end to end on a small job output built without the model: real shards whose "generated"
frames are the recorded futures with increasing corruption (or the last seed frame held), plus
manifest and index."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from qa_weights import write_evaluator

from manifests.build import finish_row, instruction_fields, seed_point_rows
from pipeline.qa_cli import add_parser
from pipeline.qa_run import run_qa
from qa.config import QAConfig, qa_config, report_dir_of
from qa.extract import FeatureRunner, _held, warp_only_frames
from qa.frechet import FeatureStats
from qa.report import cell, figure_layout
from qa.result import QAResult
from scenes.procedural.drive import DriveSpec, ProceduralScene
from scenes.procedural.instructions import make_instruction
from scenes.registry import procedural_ref
from schemas.job import QASpec
from schemas.scene import VIEWS
from schemas.spec import validate
from schemas.tables import INDEX, QA, SAMPLE, TASK
from storage.shards import GeneratedSample, content_hash, sample_members, write_shard

GEN_SIZE = (32, 32)
HORIZONS = [8, 16]
TURNS = {4: "turn_left", 12: "go_straight", 20: "turn_right"}  # start frame -> instruction type


def _resize(img: np.ndarray) -> np.ndarray:
    return cv2.resize(img, (GEN_SIZE[1], GEN_SIZE[0]), interpolation=cv2.INTER_AREA)


def _turning_waypoints(steps: int, deg_per_step: float) -> np.ndarray:
    """Waypoints of an arc turning ``deg_per_step`` over each 0.8 s step at 5 m/s."""
    t = np.array([0.2, 0.4, 0.6, 0.8])
    yaw = np.radians(deg_per_step) * t / 0.8
    pts = np.stack([np.cumsum(np.cos(yaw)), np.cumsum(np.sin(yaw))], axis=1) * 1.0
    return np.repeat(pts[None], steps, axis=0).astype(np.float32)


def build_output(root: Path, encoding: str = "mp4", still: bool = False) -> Path:
    """OUT with job.yaml, manifest.parquet, shards/*.tar (2 samples each) and index.parquet;
    ``still``: the "generated" frames are the last seed frame held."""
    spec = DriveSpec(town_seed=3, route_seed=1, weather="clear_noon", frames=40, size=(64, 64))
    scene = ProceduralScene(spec)
    images = functools.cache(scene.images)  # each frame rendered once, not once per view and task
    rows = seed_point_rows(
        scene,
        "procedural",
        procedural_ref(spec),
        HORIZONS,
        seed_frames=4,
        stride=8,
        samples=1,
        base_seed=0,
    )
    rng = np.random.default_rng(0)
    for i, row in enumerate(rows):
        if row["start_frame"] in TURNS:
            row.update(instruction_fields(make_instruction(TURNS[row["start_frame"]], rng)))
            rows[i] = finish_row(row, 0)
    manifest = validate(pa.Table.from_pylist(rows, schema=TASK.arrow), TASK, "fixture manifest")
    out = root / "out"
    (out / "shards").mkdir(parents=True)
    pq.write_table(manifest, out / "manifest.parquet")
    job = {
        "name": "qa-fixture",
        "model": "tiny",
        "manifest": {"path": str(out / "manifest.parquet")},
        "output": str(out),
        "horizons": HORIZONS,
        "encoding": {"format": encoding, "crf": 18},
        "qa": {"bootstrap": 20},
    }
    (out / "job.yaml").write_text(yaml.safe_dump(job))
    index, unit = [], 0
    for h in HORIZONS:
        tasks = [r for r in rows if r["horizon"] == h]
        for first in range(0, len(tasks), 2):
            shard, samples = f"shards/unit-{unit:06d}.tar", []
            for n, t in enumerate(tasks[first : first + 2], start=first):
                start = t["start_frame"]
                future = np.stack(
                    [[_resize(images(i)[v]) for i in range(start, start + h)] for v in VIEWS]
                )
                noise = np.random.default_rng(n).normal(0, 6.0 * n, future.shape)
                frames = np.clip(future + noise, 0, 255).astype(np.uint8)
                seed = np.stack(
                    [[_resize(images(i)[v]) for i in range(start - 4, start)] for v in VIEWS]
                )
                if still:
                    frames = np.repeat(seed[:, -1:], h, axis=1)
                kind = json.loads(t["instruction_args"]).get("type")
                steps = h // 8
                waypoints = _turning_waypoints(
                    steps, {"turn_left": 25, "turn_right": -25}.get(kind, 0)
                )
                key = f"{t['task_id']}-s0"
                meta = {
                    "schema_version": SAMPLE.version,
                    "key": key,
                    "task_id": t["task_id"],
                    "sample_index": 0,
                    "instruction": t["instruction"],
                    "category": t["category"],
                    "misleading": t["misleading"],
                    "counterfactual": t["counterfactual"],
                    "scene": t["scene"],
                    "start_frame": start,
                    "horizon": h,
                    "fps": 10.0,
                    "views": list(VIEWS),
                    "height": GEN_SIZE[0],
                    "width": GEN_SIZE[1],
                    "model_id": "fixture",
                    "model_sha256": "0" * 64,
                    "sampler": "{}",
                    "seed": t["seed"],
                    "code_version": "test",
                }
                members = sample_members(
                    GeneratedSample(
                        key, frames, seed, waypoints, np.zeros((steps, 3)), np.zeros(steps), meta
                    ),
                    VIEWS,
                    encoding,
                    18,
                    10.0,
                )
                samples.append((key, members))
                index.append(
                    {
                        "schema_version": INDEX.version,
                        "key": key,
                        "shard": shard,
                        "task_id": t["task_id"],
                        "sample_index": 0,
                        "horizon": h,
                        "category": t["category"],
                        "instruction": t["instruction"],
                        "misleading": t["misleading"],
                        "counterfactual": t["counterfactual"],
                        "scene": t["scene"],
                        "start_frame": start,
                        "weather": t["weather"],
                        "seed": t["seed"],
                        "content_sha256": content_hash(members),
                    }
                )
            write_shard(out / shard, samples)
            unit += 1
    pq.write_table(
        validate(pa.Table.from_pylist(index, schema=INDEX.arrow), INDEX, "fixture index"),
        out / "index.parquet",
    )
    return out


@pytest.fixture(scope="module")
def fixture_output(tmp_path_factory) -> Path:
    return build_output(tmp_path_factory.mktemp("qa-job"))


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory) -> Path:
    return write_evaluator(tmp_path_factory.mktemp("ckpt") / "evaluator")


def _config(out: Path, report: Path, weights: Path, evaluator: Path | None, **kw):
    return qa_config(
        str(out),
        str(report),
        QASpec(bootstrap=20),
        None,
        weights_dir=str(weights),
        evaluator=str(evaluator) if evaluator else "no/such/evaluator",
        dims=64,
        **kw,
    )


@pytest.fixture(scope="module")
def local_run(fixture_output, weights, evaluator, tmp_path_factory) -> tuple[Path, list[dict]]:
    """Every metric, in-process (without the baselines, which ``still_run`` covers)."""
    report = tmp_path_factory.mktemp("local") / "qa"
    return report, run_qa(
        _config(fixture_output, report, weights, evaluator, executor="local", baselines=False)
    ).rows


def test_end_to_end_local(fixture_output, local_run):
    report, result_rows = local_run
    for name in ("report.md", "horizon.png", "qa.json"):
        assert (report / name).is_file()
    doc = json.loads((report / "qa.json").read_text())
    rows = validate(pa.Table.from_pylist(doc["rows"], schema=QA.arrow), QA, "qa.json").to_pylist()
    assert rows == result_rows and not doc["skipped"]
    index = pq.read_table(fixture_output / "index.parquet").to_pylist()
    for h in HORIZONS:
        samples = [r for r in index if r["horizon"] == h]
        pooled = {
            r["metric"]: r
            for r in rows
            if r["horizon"] == h and r["view"] == "pooled" and r["category"] == "all"
        }
        assert set(pooled) >= {"fid", "fvd", "fd_drive", "fid_inf"}
        assert pooled["fid"]["n_generated"] == pooled["fid"]["n_real"] == 3 * h * len(samples)
        assert pooled["fvd"]["n_generated"] == pooled["fvd"]["n_real"] == 3 * len(samples)
        assert pooled["fd_drive"]["n_generated"] == pooled["fd_drive"]["n_real"] == h * len(samples)
        for m in ("fid", "fvd", "fd_drive"):
            assert pooled[m]["value"] > 0 and pooled[m]["ci_low"] <= pooled[m]["ci_high"]
            views = [
                r for r in rows if r["metric"] == m and r["horizon"] == h and r["view"] in VIEWS
            ]
            assert len(views) == (3 if m != "fd_drive" else 0)
            assert all(r["n_generated"] == pooled[m]["n_generated"] // 3 for r in views)
            cats = [
                r
                for r in rows
                if r["metric"] == m
                and r["horizon"] == h
                and r["view"] == "pooled"
                and r["category"] != "all"
            ]
            assert sum(r["n_generated"] for r in cats) == pooled[m]["n_generated"]
        adherence = [
            r for r in rows if r["metric"] == "instruction_adherence" and r["horizon"] == h
        ]
        assert [r["view"] for r in adherence] == ["pooled", "front"]  # plan, video
        assert all(r["n_generated"] == len(samples) and r["category"] == "turn" for r in adherence)
        stats = FeatureStats.load(report / "stats" / f"fid-h{h:03d}-generated.npz")
        assert stats.count == pooled["fid"]["n_generated"] and stats.dim == 64
    # the turn instructions come with arcs of 25 degrees per step: a turn only over 2 steps
    # (16 frames)
    adherence = {
        r["horizon"]: r["value"]
        for r in rows
        if (r["metric"], r["view"]) == ("instruction_adherence", "pooled")
    }
    assert adherence == {8: pytest.approx(1 / 3), 16: 1.0}
    text = (report / "report.md").read_text()
    assert "| Horizon | FID | FID∞ | FVD | FD-drive | Instruction adherence (plan) |" in text
    assert "(N=" in text and "repeat last" not in text and not doc["baselines"]
    png = cv2.imread(str(report / "horizon.png"))
    assert png is not None and png.shape[0] > 500 and png.shape[1] > 800


def test_end_to_end_ray_matches_local(fixture_output, weights, evaluator, local_run, tmp_path):
    import ray

    metrics = ("fd_drive", "instruction_adherence")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ray_rows = run_qa(
            _config(
                fixture_output,
                tmp_path / "ray",
                weights,
                evaluator,
                executor="ray",
                workers=2,
                metrics=metrics,
            )
        ).rows
    finally:
        ray.shutdown()
    local_rows = [r for r in local_run[1] if r["metric"] in metrics]
    assert {r["metric"] for r in ray_rows} == set(metrics) and len(ray_rows) == len(local_rows)
    # statistics merged across 2 actors = one pass (actors run torch on 1 thread: float32 features
    # may differ in the last bits from the in-process run; near-zero distances, such as the random
    # evaluator's FD-drive of ~3e-4, then differ by ~1e-5 absolute)
    for a, b in zip(ray_rows, local_rows, strict=True):
        assert a["n_generated"] == b["n_generated"] and a["n_real"] == b["n_real"]
        for key in ("value", "ci_low", "ci_high"):
            assert a[key] == (
                None if b[key] is None else pytest.approx(b[key], rel=2e-2, abs=1e-4)
            ), (a, b)


@pytest.fixture
def lmgd(monkeypatch):
    """``lmgd`` with the qa verb, registered here too until pipeline/cli.py hooks it in."""
    import pipeline.cli as cli

    original = cli.build_parser

    def build():
        parser = original()
        verbs = next(a for a in parser._actions if a.dest == "verb")
        if "qa" not in verbs.choices:
            add_parser(verbs)
        return parser

    monkeypatch.setattr(cli, "build_parser", build)
    return cli.main


def test_cli_generated_out_skips_fd_drive_without_evaluator(
    fixture_output, weights, tmp_path, capsys, lmgd
):
    out = tmp_path / "report"
    code = lmgd(
        [
            "qa",
            "--generated",
            str(fixture_output),
            "--out",
            str(out),
            "--weights-dir",
            str(weights),
            "--executor",
            "local",
            "--metrics",
            "fd_drive",
            "instruction_adherence",
            "--bootstrap",
            "0",
            "--evaluator",
            str(tmp_path / "missing"),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "FD-drive skipped" in printed and "missing" in printed
    doc = json.loads((out / "qa.json").read_text())
    assert "fd_drive" in doc["skipped"] and {r["metric"] for r in doc["rows"]} == {
        "instruction_adherence"
    }
    assert "FD-drive skipped" in (out / "report.md").read_text()
    # horizon.png: no panel for a metric without figures, one short line per such metric
    result = QAResult(doc["rows"], {}, doc["skipped"])
    panels, notes = figure_layout(result)
    assert panels == [] and len(notes) == 1  # FID and FVD were not asked for
    assert notes[0].startswith("FD-drive skipped: ") and ".../missing" in notes[0]
    assert all(len(n) <= 110 and "\n" not in n for n in notes)
    height, width = cv2.imdecode(
        np.frombuffer((out / "horizon.png").read_bytes(), np.uint8), cv2.IMREAD_COLOR
    ).shape[:2]
    assert width < height * 2  # one column: the trajectory panel alone


def test_cli_missing_weights_is_bad_input(fixture_output, tmp_path, monkeypatch, capsys, lmgd):
    monkeypatch.delenv("LMGD_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    code = lmgd(
        [
            "qa",
            "--generated",
            str(fixture_output),
            "--out",
            str(tmp_path / "r"),
            "--executor",
            "local",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert (
        "pt_inception-2015-12-05-6726825d.pth" in err
        and "github.com/mseitzer/pytorch-fid/releases" in err
    )


def test_cli_argument_errors(fixture_output, capsys, lmgd):
    assert lmgd(["qa"]) == 2
    assert lmgd(["qa", "--generated", str(fixture_output)]) == 2
    assert "--out DIR" in capsys.readouterr().err


def test_report_dir_and_parser(lmgd):
    import pipeline.cli as cli

    assert report_dir_of("s3://bucket/run") == "s3://bucket/run/qa"
    assert report_dir_of("out/demo") == str(Path("out/demo") / "qa")
    args = cli.build_parser().parse_args(["qa", "jobs/demo.yaml", "--dims", "64"])
    assert args.job == "jobs/demo.yaml" and args.dims == 64 and args.executor == "ray"


def test_gallery_draws_seed_and_generated_frames(fixture_output, local_run):
    from qa.gallery import CAPTION_H, frame_times
    from storage.read import iter_samples

    report, _ = local_run
    pngs = sorted((report / "gallery").glob("*.png"))
    text = (report / "report.md").read_text()
    assert (
        pngs
        and len(pngs) <= 4
        and all(f"![gallery/{p.name}](gallery/{p.name})" in text for p in pngs)
    )
    samples = {
        (s.meta["scene"], s.meta["start_frame"]): s
        for s in iter_samples(str(fixture_output))
        if s.meta["horizon"] == max(HORIZONS)
    }
    image = cv2.cvtColor(cv2.imread(str(pngs[0])), cv2.COLOR_BGR2RGB)
    scene, start = pngs[0].stem.rsplit("-f", 1)
    sample = samples[(scene, int(start))]
    scale = 128 // GEN_SIZE[0]
    tile_h, tile_w = GEN_SIZE[0] * scale, 3 * GEN_SIZE[1] * scale
    assert (
        frame_times(16) == [8, 16] and frame_times(64) == [8, 16, 32, 64] and frame_times(8) == [8]
    )
    assert image.shape == (
        2 * CAPTION_H + tile_h,
        3 * tile_w + 2 * 4,
        3,
    )  # header, caption, seed + t+8 + t+16
    last = image[2 * CAPTION_H :, 2 * (tile_w + 4) :]
    expected = np.concatenate(list(sample.frames[:, 15]), axis=1).repeat(scale, 0).repeat(scale, 1)
    assert np.array_equal(last, expected)


def test_gallery_groups_counterfactuals_of_one_seed_point():
    from qa.gallery import pick_groups

    def row(scene, start, instruction, horizon=64, counterfactual=False, index=0):
        return {
            "key": f"{scene}{start}{instruction}{horizon}",
            "shard": "shards/unit-000000.tar",
            "sample_index": index,
            "horizon": horizon,
            "scene": scene,
            "start_frame": start,
            "instruction": instruction,
            "counterfactual": counterfactual,
        }

    rows = [
        row("a", 10, "go straight"),
        row("b", 20, "turn left"),
        row("b", 20, "turn right", counterfactual=True),
        row("b", 20, "turn left", horizon=8),
        row("b", 20, "turn left", index=1),
        row("c", 5, "stop"),
    ]
    groups = pick_groups(pa.Table.from_pylist(rows), limit=2)
    assert [[r["instruction"] for r in g] for g in groups] == [
        ["turn left", "turn right"],
        ["go straight"],
    ]
    assert all(r["horizon"] == 64 and r["sample_index"] == 0 for g in groups for r in g)


@pytest.fixture(scope="module")
def still_run(weights, evaluator, tmp_path_factory) -> tuple[Path, QAResult]:
    """FD-drive and the trajectory figures, with the baselines, of an output whose "generated"
    frames are the last seed frame held (PNG shards, so exactly that frame)."""
    root = tmp_path_factory.mktemp("still")
    out = build_output(root, encoding="png", still=True)
    metrics = ("fd_drive", "instruction_adherence", "action_video_agreement")
    config = _config(
        out, root / "qa", weights, evaluator, executor="local", encoding="png", metrics=metrics
    )
    return root / "qa", run_qa(config)


def test_repeat_last_of_a_held_last_frame_equals_the_generated_figure(still_run):
    report, result = still_run
    doc = json.loads((report / "qa.json").read_text())
    text = (report / "report.md").read_text()
    assert (
        "| Horizon | FD-drive | FD-drive (repeat last frame) | FD-drive (warp only) | "
        "Instruction adherence (plan) | Instruction adherence (video) |" in text
    )
    assert doc["baselines"] == result.baselines and doc["protocol"]["baselines"] == [
        "repeat_last",
        "warp_only",
    ]
    for h in HORIZONS:
        gen = next(
            r
            for r in doc["rows"]
            if (r["metric"], r["horizon"], r["view"], r["category"])
            == ("fd_drive", h, "pooled", "all")
        )
        base = {b["baseline"]: b for b in doc["baselines"] if b["horizon"] == h}
        assert set(base) == {"repeat_last", "warp_only"}
        for b in base.values():
            assert (b["metric"], b["view"], b["category"]) == ("fd_drive", "pooled", "all")
            assert (b["n_real"], b["n_generated"]) == (gen["n_real"], gen["n_generated"])
            assert b["ci_low"] <= b["ci_high"]
            stats = FeatureStats.load(report / "stats" / f"fd_drive-h{h:03d}-{b['baseline']}.npz")
            assert stats.count == gen["n_generated"]
        # features of the held frame extracted once and repeated = those of the held video; the
        # same bootstrap resamples give the same interval
        for key in ("value", "ci_low", "ci_high"):
            assert base["repeat_last"][key] == pytest.approx(gen[key], rel=1e-5)
        assert base["warp_only"]["value"] != pytest.approx(gen["value"], rel=1e-2)  # plans move
        line = f"| {h} | {cell(gen)} | {cell(base['repeat_last'], False)} | "
        assert line + f"{cell(base['warp_only'], False)} |" in text


def test_adherence_of_a_still_video_differs_from_its_plan(still_run):
    report, result = still_run
    adherence = {
        (r["view"], r["horizon"]): r["value"]
        for r in result.rows
        if r["metric"] == "instruction_adherence"
    }
    # the plans turn over 2 steps (16 frames); the video never turns: only "go straight" holds
    assert adherence == {
        ("pooled", 8): pytest.approx(1 / 3),
        ("pooled", 16): 1.0,
        ("front", 8): pytest.approx(1 / 3),
        ("front", 16): pytest.approx(1 / 3),
    }
    seen = result.details["adherence_video"][16]["feasible"]
    assert all(set(got) == {"straight"} for got in seen.values())
    text = (report / "report.md").read_text()
    assert "## Instruction adherence (plan)" in text and "## Instruction adherence (video)" in text


def test_horizon_png_draws_the_baselines_dashed_in_the_metric_color(still_run):
    import matplotlib.pyplot as plt

    from qa.report import _fd_panel

    _, result = still_run
    fig, ax = plt.subplots()
    _fd_panel(ax, result.rows, result.baselines, "fd_drive", "FD-drive")
    lines = {c.get_label(): c.lines[0] for c in ax.containers}
    plt.close(fig)
    assert set(lines) == {"generated, all views", "repeat last frame", "warp only"}
    color = lines["generated, all views"].get_color()
    for name in ("repeat last frame", "warp only"):
        assert lines[name].get_color() == color and lines[name].get_linestyle() in ("--", "-.")
        assert list(lines[name].get_xdata()) == HORIZONS


def test_warp_only_of_a_still_plan_is_the_last_frame_held(fixture_output):
    from storage.read import iter_samples

    sample = next(s for s in iter_samples(str(fixture_output)) if s.meta["horizon"] == 16)
    held = np.repeat(sample.seed_frames[:, -1:], 16, axis=1)
    moved = warp_only_frames(sample, torch.device("cpu"))
    assert moved.shape == sample.frames.shape and not np.array_equal(moved, held)
    sample.waypoints = np.zeros_like(sample.waypoints)
    np.testing.assert_array_equal(warp_only_frames(sample, torch.device("cpu")), held)


class _Features:
    """A stand-in extractor: 8 block means of each item (image, clip or multi-view frame)."""

    views = VIEWS

    def __call__(self, x: np.ndarray) -> np.ndarray:
        flat = x.reshape(len(x), -1).astype(np.float64)
        return np.stack([b.mean(1) for b in np.array_split(flat, 8, axis=1)], axis=1)


@pytest.mark.parametrize("horizon", [8, 24])
def test_held_frame_features_are_those_of_the_held_video(tmp_path, horizon):
    runner = FeatureRunner(QAConfig(str(tmp_path), str(tmp_path / "qa"), metrics=()))
    runner.extractors = {m: _Features() for m in ("fid", "fvd", "fd_drive")}
    last = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    held = _held(runner._extract_still(last, list(VIEWS)), horizon)
    video = runner._extract(np.repeat(last[:, None], horizon, axis=1), list(VIEWS))
    assert held.keys() == video.keys() == {"fid", "fvd", "fd_drive"}
    for m in video:
        np.testing.assert_allclose(held[m], video[m], rtol=1e-12)
