"""The lmgd command line: verbs, outputs, exit codes and messages."""

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from pipeline.cli import build_parser, main
from scenes.lmdrive import open_root

VERBS = [
    [],
    ["demo"],
    ["scenes"],
    ["scenes", "render"],
    ["scenes", "sheet"],
    ["manifest"],
    ["manifest", "build"],
    ["manifest", "curate"],
    ["manifest", "stats"],
    ["job"],
    ["job", "validate"],
    ["job", "schema"],
    ["train"],
    ["qa"],
]


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v) or "lmgd")
def test_help_on_every_verb(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([*verb, "--help"])
    assert e.value.code == 0
    assert "usage: lmgd" in capsys.readouterr().out


def test_every_verb_has_help_text():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    assert {"demo", "scenes", "manifest", "job"} <= set(sub.choices)
    assert all(a.help for a in sub._choices_actions)


def test_render_then_sheet(tmp_path, capsys):
    root = tmp_path / "data"
    args = [
        "scenes",
        "render",
        "--town-seed",
        "2",
        "--route-seed",
        "5",
        "--frames",
        "6",
        "--size",
        "64",
        "--out",
        str(root),
    ]
    assert main(args) == 0
    assert main([*args[:5], "6", *args[6:]]) == 0  # a second route in the same root
    scenes = open_root(root)
    assert sorted(s.name for s in scenes) == [
        "town0002_route0005_clear_noon",
        "town0002_route0006_clear_noon",
    ]
    assert all(len(s) == 6 and s.images(0)["front"].shape == (64, 64, 3) for s in scenes)
    assert not list(root.glob("*.partial"))

    sheet = tmp_path / "sheet.png"
    assert main(["scenes", "sheet", str(root), "--out", str(sheet), "--frames", "2"]) == 0
    img = cv2.imread(str(sheet))
    assert img is not None and img.shape[1] == 672 and img.shape[0] > 2 * 2 * 224


def test_render_refuses_to_overwrite_without_flag(tmp_path, capsys):
    args = [
        "scenes",
        "render",
        "--town-seed",
        "2",
        "--route-seed",
        "5",
        "--frames",
        "3",
        "--size",
        "32",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_corrupt_image_names_the_file(tmp_path, capsys):
    root = tmp_path / "data"
    assert (
        main(
            [
                "scenes",
                "render",
                "--town-seed",
                "2",
                "--route-seed",
                "5",
                "--frames",
                "3",
                "--size",
                "32",
                "--out",
                str(root),
            ]
        )
        == 0
    )
    bad = next(root.glob("*/rgb_front/0001.png"))
    bad.write_bytes(b"not a png")
    assert (
        main(["scenes", "sheet", str(root), "--out", str(tmp_path / "s.png"), "--frames", "3"]) == 2
    )
    assert "rgb_front/0001.png" in capsys.readouterr().err
    assert not (tmp_path / "s.png").exists()


def test_argparse_errors_exit_2_through_the_console_script(tmp_path):
    lmgd = Path(sys.executable).with_name("lmgd")
    r = subprocess.run(
        [str(lmgd), "scenes", "render", "--size", "abc", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert r.returncode == 2 and "size must be N or HxW" in r.stderr


def test_demo_runs_the_job_and_reports_with_a_gallery(tmp_path, monkeypatch, capsys):
    from pipeline_helpers import tiny_job, write_job
    from qa_weights import write_evaluator

    from pipeline.cli import _demo_job

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))  # no Inception weights anywhere
    monkeypatch.delenv("LMGD_WEIGHTS_DIR", raising=False)
    evaluator = write_evaluator(tmp_path / "evaluator")
    job = tiny_job(
        str(tmp_path / "unused"),
        qa={
            "metrics": ["fid", "fd_drive", "instruction_adherence"],
            "evaluator": str(evaluator),
            "bootstrap": 0,
        },
    )
    spec = write_job(tmp_path / "job.yaml", job)
    out = tmp_path / "out"
    assert main(["demo", "--job", str(spec), "--out", str(out), "--executor", "local"]) == 0
    printed, err = capsys.readouterr()
    report = (out / "qa" / "report.md").read_text()
    # stderr is no terminal here: each loop ends with a progress line (storage/progress.py)
    assert re.search(r"^generate: (\d+)/\1 sample \(100%\) \| .* finished in ", err, re.M), err
    assert re.search(r"^qa features: (\d+)/\1 sample \(100%\) \| ", err, re.M), err
    assert "FID skipped: pt_inception" in printed and "FID skipped: pt_inception" in report
    assert "horizon 16: fd_drive (all)" in printed and f"report: {out}/qa/report.md" in printed
    assert "| Horizon | FD-drive |" in report and "## Gallery" in report
    sheets = sorted((out / "qa" / "gallery").glob("*.png"))
    assert sheets and all(f"(gallery/{p.name})" in report for p in sheets)
    assert _demo_job("jobs/demo.yaml").is_file()  # the default resolves from any working directory


def test_the_demo_fits_its_cpu_workers_to_the_cores_here():
    from pipeline.cli import fit_cpu_workers
    from schemas.job import load_job

    job = load_job("jobs/demo.yaml")
    assert job.resources.workers == 2 and job.resources.gpus_per_worker == 0
    assert fit_cpu_workers(job, cpus=1).resources.workers == 1
    assert fit_cpu_workers(job, cpus=8) == job  # never more than the job asks for
    gpu = job.model_copy(
        update={"resources": job.resources.model_copy(update={"gpus_per_worker": 1})}
    )
    assert fit_cpu_workers(gpu, cpus=1) == gpu  # GPU workers are the cluster's business


@pytest.mark.parametrize("verbose", [False, True])
def test_a_crash_is_one_line_or_its_traceback_under_v_and_never_a_secret(
    verbose, monkeypatch, capsys
):
    """A bug (not a bad input) exits 1: one summary line, the traceback only with -v; a secret of
    the environment or a URL's user-info in the exception is masked either way."""
    secret = "s3cr3t-value-from-the-environment"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)

    def crash(args):
        raise ValueError(f"boom at http://user:hunter22@host/ with {secret}")

    monkeypatch.setattr("pipeline.cli.cmd_job_schema", crash)
    assert main([*(["-v"] if verbose else []), "job", "schema"]) == 1
    err = capsys.readouterr().err
    assert "lmgd: internal error: ValueError: boom at http://***@host/ with ***" in err
    assert ("Traceback" in err) == verbose and ("rerun with -v" in err) != verbose
    assert secret not in err and "hunter22" not in err
