"""Damaged and partial job outputs: ``lmgd inspect`` and ``lmgd qa`` name each file at fault, count
or measure the rest, and exit 1 (2 when the place is no job output at all), never with a
traceback."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pipeline_helpers import tiny_job
from qa_weights import write_evaluator

from pipeline.cli import main
from pipeline.driver import run_job

DAMAGED = "unit-000001"  # the unit whose shard or marker a test damages


@pytest.fixture(scope="module")
def job_output(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("job") / "out"
    run_job(tiny_job(str(out)), executor="local", progress_bar=False)
    return out


@pytest.fixture
def out(job_output, tmp_path) -> Path:
    """A copy of the job output for one test to damage."""
    return Path(shutil.copytree(job_output, tmp_path / "out"))


def _lmgd(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text
    return code, text


def _samples(out: Path, unit: str | None = None) -> int:
    """Samples of the output, or of one unit, as the markers list them."""
    markers = sorted((out / "_done").glob(f"{unit or '*'}.json"))
    return sum(len(json.loads(m.read_text())["samples"]) for m in markers)


def _truncate(shard: Path) -> None:
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def test_intact_output_is_verified(out, capsys):
    code, text = _lmgd(capsys, "inspect", out)
    assert code == 0
    assert f"{_samples(out)} samples in 4 shards" in text and "4 shard(s)" in text
    assert "all match" in text


def test_truncated_shard_is_named_and_the_rest_verified(out, capsys):
    shard = out / "shards" / f"{DAMAGED}.tar"
    _truncate(shard)
    code, text = _lmgd(capsys, "inspect", out)
    assert code == 1
    assert f"{shard}: sha256 differs from its marker" in text and "1 problem(s)" in text
    intact = _samples(out) - _samples(out, DAMAGED)
    assert f"verified 3 of 4 shard(s) against their markers ({intact} samples intact)" in text


def test_garbage_index_is_named_and_counts_come_from_the_markers(out, capsys):
    (out / "index.parquet").write_bytes(b"not parquet at all" * 10)
    code, text = _lmgd(capsys, "inspect", out)
    assert code == 1
    assert f"{out / 'index.parquet'}: not a readable Parquet file" in text
    assert f"{_samples(out)} samples in 4 shards (from the completion markers)" in text
    assert "verified 4 of 4 shard(s)" in text


@pytest.mark.parametrize(
    "text, why",
    [
        ("{ not json", "not JSON"),
        (json.dumps({"shard": "shards/unit-000001.tar", "samples": []}), "no valid sha256"),
        (json.dumps({"shard": "x", "sha256": "0", "samples": [{"key": "k"}]}), "schema index"),
    ],
    ids=["not-json", "no-sha256", "bad-samples"],
)
def test_malformed_marker_is_named_and_the_rest_verified(out, capsys, text, why):
    marker = out / "_done" / f"{DAMAGED}.json"
    intact = _samples(out) - _samples(out, DAMAGED)
    marker.write_text(text)
    code, printed = _lmgd(capsys, "inspect", out)
    assert code == 1
    assert f"{marker}: " in printed and why in printed
    assert "3 unit(s) done (completion markers), 4 shard file(s)" in printed
    assert f"verified 3 of 3 shard(s) against their markers ({intact} samples intact)" in printed


def test_interrupted_output_reports_what_is_done_and_the_rerun(out, capsys):
    (out / "index.parquet").unlink()
    (out / "_done" / "unit-000003.json").unlink()  # killed after its shard, before its marker
    code, text = _lmgd(capsys, "inspect", out)
    assert code == 1
    assert f"{out / 'index.parquet'}: missing" in text
    assert f"{out / 'shards' / 'unit-000003.tar'}: no completion marker" in text
    done = _samples(out)
    assert f"{done} samples in 3 shards (from the completion markers)" in text
    assert "3 unit(s) done (completion markers), 4 shard file(s)" in text
    assert "`lmgd generate JOB` resumes the run" in text


def test_shard_without_marker_is_named(out, capsys):
    (out / "_done" / f"{DAMAGED}.json").unlink()
    code, text = _lmgd(capsys, "inspect", out)
    assert code == 1
    assert f"{out / 'shards' / f'{DAMAGED}.tar'}: no completion marker" in text
    assert f"verified 3 of 3 shard(s) against their markers ({_samples(out)} samples" in text


@pytest.mark.parametrize("make", [True, False], ids=["empty", "missing"])
def test_a_place_without_a_job_output_is_bad_input(tmp_path, capsys, make):
    place = tmp_path / "nothing"
    if make:
        place.mkdir()
    code, text = _lmgd(capsys, "inspect", place)
    assert code == 2
    assert f"{place}: not a job output" in text and "job.yaml" in text


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory) -> Path:
    return write_evaluator(tmp_path_factory.mktemp("ckpt") / "evaluator")


def _qa(out: Path, report: Path, evaluator: Path) -> list[str]:
    """``lmgd qa`` on ``out``, FD-drive only."""
    return [
        *("qa", "--generated", str(out), "--out", str(report), "--executor", "local"),
        *("--metrics", "fd_drive", "--evaluator", str(evaluator), "--bootstrap", "0"),
        *("--gallery", "0"),
    ]


def _rows(report: Path) -> list[dict]:
    return json.loads((report / "qa.json").read_text())["rows"]


@pytest.fixture(scope="module")
def intact_rows(job_output, evaluator, tmp_path_factory) -> list[dict]:
    report = tmp_path_factory.mktemp("qa") / "qa"
    assert main(_qa(job_output, report, evaluator)) == 0
    return _rows(report)


def _flip(shard: Path) -> None:
    """One byte flipped inside a video member: the tar still reads, the sample decodes."""
    with tarfile.open(shard) as tar:
        member = next(m for m in tar if m.name.endswith(".front.mp4"))
    data = bytearray(shard.read_bytes())
    data[member.offset_data + member.size // 2] ^= 0xFF
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, why",
    [(_truncate, "cannot be read"), (_flip, "differs from its listed sha256")],
    ids=["truncated", "corrupt"],
)
def test_qa_leaves_out_a_damaged_shard_and_measures_the_rest(
    out, tmp_path, capsys, evaluator, intact_rows, damage, why
):
    shard = out / "shards" / f"{DAMAGED}.tar"
    damage(shard)
    code, text = _lmgd(capsys, *_qa(out, tmp_path / "qa", evaluator))
    rows = _rows(tmp_path / "qa")
    assert code == 1
    assert f"{shard}: " in text and why in text and "exclude their samples" in text
    assert str(shard) in (tmp_path / "qa" / "report.md").read_text()
    index = pq.read_table(out / "index.parquet").to_pylist()
    lost = [r for r in index if r["shard"] == f"shards/{DAMAGED}.tar"]
    (h,) = {r["horizon"] for r in lost}
    pooled = next(
        r
        for r in rows
        if (r["metric"], r["horizon"], r["view"], r["category"]) == ("fd_drive", h, "pooled", "all")
    )
    kept = sum(r["horizon"] == h for r in index) - len(lost)
    assert pooled["n_generated"] == pooled["n_real"] == h * kept  # one feature per frame
    assert [r for r in rows if r["horizon"] != h] == [r for r in intact_rows if r["horizon"] != h]


def test_qa_with_every_shard_damaged_fails_naming_them(out, tmp_path, capsys, evaluator):
    shards = sorted((out / "shards").glob("*.tar"))
    for shard in shards:
        _truncate(shard)
    code, text = _lmgd(capsys, *_qa(out, tmp_path / "qa", evaluator))
    assert code == 1 and "no sample left to measure" in text
    assert all(f"{shard}: cannot be read" in text for shard in shards)
    assert not (tmp_path / "qa" / "report.md").exists()


def test_qa_names_a_garbage_index(out, tmp_path, capsys, evaluator):
    (out / "index.parquet").write_bytes(b"\0" * 64)
    code, text = _lmgd(capsys, *_qa(out, tmp_path / "qa", evaluator))
    assert code == 1 and f"{out / 'index.parquet'}: not a readable Parquet file" in text
