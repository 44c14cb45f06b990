"""``lmgd qa``: the QA verb; :func:`add_parser` registers it on the ``lmgd`` sub-command parser."""

from __future__ import annotations

import argparse

from pipeline.executor import add_executor_arguments
from schemas.errors import ConfigError

DESCRIPTION = """\
Measure a job output per horizon: FID (Inception-v3), FVD (I3D), FD-drive (the project's evaluator
encoder), instruction adherence and action-video agreement, against the recorded futures of the same
scenes; each Fréchet distance beside those of two baselines that generate nothing (the last seed
frame held, and moved by the sample's plan). Writes report.md, horizon.png, qa.json and stats/*.npz
to OUT/qa (or --out). The Inception and I3D weights are read from --weights-dir / the job's
qa.weights_dir, $LMGD_WEIGHTS_DIR or $TORCH_HOME/hub/checkpoints; nothing is downloaded. Protocol:
qa/PROTOCOL.md."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``qa`` (``lmgd qa JOB`` and ``lmgd qa --generated OUT --out DIR``)."""
    from qa.config import INCEPTION_DIMS, METRICS

    p = subparsers.add_parser(
        "qa",
        help="FID / FVD / FD-drive per horizon of a job's output, with a report",
        description=DESCRIPTION,
    )
    p.add_argument("job", nargs="?", help="job spec YAML: evaluates its output and writes OUT/qa/")
    p.add_argument(
        "--generated",
        metavar="OUT",
        help="a job output (directory or s3://bucket/prefix) instead of JOB",
    )
    p.add_argument(
        "--out", metavar="DIR", help="where to write the QA outputs (required with --generated)"
    )
    p.add_argument(
        "--metrics",
        nargs="+",
        choices=METRICS,
        help="metrics to compute (default: the job's qa.metrics plus action_video_agreement)",
    )
    p.add_argument("--weights-dir", help="directory with the Inception / I3D weight files")
    p.add_argument(
        "--evaluator",
        help="FD-drive evaluator checkpoint (default: the job's, checkpoints/evaluator)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        help="bootstrap replicates for the intervals (0: none; default: the job's)",
    )
    p.add_argument(
        "--dims",
        type=int,
        choices=INCEPTION_DIMS,
        help="Inception features; 2048 (default) is the FID protocol, "
        "smaller ones are for smoke tests and are labelled as such",
    )
    add_executor_arguments(p, "feature workers")
    p.add_argument(
        "--workers", type=int, help="Ray feature workers (default: the job's resources.workers)"
    )
    p.add_argument(
        "--gallery",
        type=int,
        help="seed points drawn with their generated futures in report.md (default 4; 0: none)",
    )
    p.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_const",
        const=False,
        help="skip the repeat-last and warp-only baselines (one feature extraction less a sample)",
    )
    p.add_argument("--device", help="torch device (default: $LMGD_DEVICE, else CUDA, MPS, CPU)")
    p.add_argument(
        "--endpoint-url", help="S3-compatible endpoint (else the job's, else AWS_ENDPOINT_URL)"
    )
    p.add_argument("--region", help="S3 region")
    p.set_defaults(func=cmd_qa)
    return p


def _job_of_output(output: str, endpoint_url: str | None, region: str | None):
    """The resolved job spec a job output keeps in ``job.yaml``, if any; an output without an
    index is refused before anything else is checked."""
    from schemas.job import parse_job
    from schemas.user_yaml import parse_yaml
    from storage.read import read_index
    from storage.store import open_storage

    storage = open_storage(output, endpoint_url, region)
    if not storage.exists("index.parquet"):
        read_index(storage)  # says why it is missing
    if not storage.exists("job.yaml"):
        return None
    return parse_job(
        parse_yaml(storage.get_bytes("job.yaml"), storage.url("job.yaml")), storage.url("job.yaml")
    )


def run_and_print(config, indent: str = ""):
    """Run QA with a progress bar, printing skipped metrics first and the headline figures per
    horizon after (pooled or front view, all or turn instructions; the baselines beside each
    Fréchet distance); returns the :class:`~qa.run.QAResult`."""
    from pipeline.qa_run import run_qa
    from qa.report import BASELINE_NAMES, cell
    from qa.result import ADHERENCE_VIEWS
    from storage.progress import progress

    for reason in config.skipped().values():
        print(f"{indent}{reason}", flush=True)
    with progress(None, "qa features", "sample") as bar:

        def start(total: int) -> None:
            bar.total = total
            bar.refresh()

        result = run_qa(config, progress=bar.update, on_start=start)
    source = {v: s for s, v in ADHERENCE_VIEWS.items()}
    for h in sorted({r["horizon"] for r in result.rows}):
        figures = []
        for r in result.rows:
            if not (
                r["horizon"] == h
                and r["view"] in ("pooled", "front")
                and r["category"] in ("all", "turn")
            ):
                continue
            adherence = r["metric"] == "instruction_adherence"
            what = f"{source[r['view']]}, turn" if adherence else r["category"]
            beside = [
                f"{BASELINE_NAMES[b['baseline']]} {cell(b, False)}"
                for b in result.baselines
                if (b["metric"], b["horizon"], r["view"], r["category"])
                == (r["metric"], h, "pooled", "all")
            ]
            figures.append(
                f"{r['metric']} ({what}) {cell(r)}" + (f" vs {', '.join(beside)}" if beside else "")
            )
        print(f"{indent}horizon {h}: " + "; ".join(figures))
    return result


def cmd_qa(args: argparse.Namespace) -> int:

    from qa.config import qa_config, report_dir_of
    from schemas.job import QASpec, load_job

    if bool(args.job) == bool(args.generated):
        raise ConfigError(
            "give a job spec (lmgd qa JOB) or a job output (lmgd qa --generated OUT --out DIR)"
        )
    if args.generated and not args.out:
        raise ConfigError("--generated OUT needs --out DIR (where the QA outputs go)")
    for name in ("bootstrap", "workers", "gallery"):
        value = getattr(args, name)
        least = 1 if name == "workers" else 0
        if value is not None and value < least:
            raise ConfigError(f"--{name} must be >= {least}, got {value}")
    if args.job:
        job = load_job(args.job)
        output = job.output
    else:
        output = args.generated
        job = _job_of_output(output, args.endpoint_url, args.region)
    config = qa_config(
        output,
        args.out or report_dir_of(output),
        job.qa if job else QASpec(),
        job,
        metrics=args.metrics,
        weights_dir=args.weights_dir,
        evaluator=args.evaluator,
        bootstrap=args.bootstrap,
        dims=args.dims,
        executor=args.executor,
        ray_address=args.ray_address,
        workers=args.workers,
        device=args.device,
        gallery=args.gallery,
        baselines=args.baselines,
        endpoint_url=args.endpoint_url,
        region=args.region,
    )
    result = run_and_print(config)
    print(
        f"wrote {config.report}/report.md, horizon.png, qa.json and "
        f"{len(result.files)} more file(s)"
    )
    return 0
