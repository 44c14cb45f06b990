"""The ``lmgd`` command line.

Exit codes: 0 done, 2 bad input (the message names the file, row or key and what is valid),
1 failure at run time.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.executor import add_executor_arguments
from schemas.errors import BadInputError, ConfigError, LmgdError
from schemas.secrets import RedactingFilter, redact
from schemas.shipped import data_root
from storage.atomic import PARTIAL_SUFFIX

if TYPE_CHECKING:
    from schemas.job import JobSpec

log = logging.getLogger("lmgd")

DEMO_JOB = "jobs/demo.yaml"


def _size(text: str) -> tuple[int, int]:
    """``128`` or ``128x224`` (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 16 or max(parts) > 1024:
        raise argparse.ArgumentTypeError(
            f"size must be N or HxW with 16 <= N <= 1024, got {text!r}"
        )
    return parts[0], parts[1]


def _out_file(path: str, suffix: str, what: str) -> Path:
    """``--out`` of a verb writing one file: a ``suffix`` file whose folder can be made."""
    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"--out {path}: is a directory; give a {suffix} file name")
    if out.suffix != suffix:
        raise ConfigError(f"--out {path}: {what} is written as {suffix}; give a {suffix} name")
    _out_dir(out.parent)
    return out


def _out_dir(path: Path) -> Path:
    """A folder to write into: it, or the nearest of its parents that exists, is a folder."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"--out {path}: {existing} is a file, not a folder")
    return path


def _progress(total: int, desc: str, unit: str = "frame"):
    from storage.progress import progress

    return progress(total, desc, unit)


# ----------------------------------------------------------------------------- scenes
def cmd_scenes_render(args: argparse.Namespace) -> int:
    from scenes.lmdrive import write_index, write_route
    from scenes.procedural.drive import DriveSpec, ProceduralScene

    spec = DriveSpec(
        args.town_seed, args.route_seed, args.weather, args.frames, args.size, tuple(args.turns)
    )
    root = _out_dir(Path(args.out))
    scene = ProceduralScene(spec)
    root.mkdir(parents=True, exist_ok=True)
    with _progress(len(scene), f"render {scene.name}") as bar:
        route = write_route(
            scene, root / scene.name, overwrite=args.overwrite, on_frame=lambda _: bar.update()
        )
    routes = sorted(
        p
        for p in root.iterdir()
        if (p / "measurements").is_dir() and not p.name.endswith(PARTIAL_SUFFIX)
    )
    index = write_index(root, routes)
    print(f"wrote {route} ({len(scene)} frames); {index} lists {len(routes)} route(s)")
    return 0


def _open_scenes(path: Path):
    from scenes.lmdrive import open_root, open_route

    if not path.exists():
        raise BadInputError(f"{path}: no such route folder or dataset root")
    if (path / "dataset_index.txt").is_file():
        return open_root(path)
    return [open_route(path)]


def cmd_scenes_sheet(args: argparse.Namespace) -> int:
    from scenes.sheet import contact_sheet, write_png

    _out_file(args.out, ".png", "a contact sheet")
    scenes = _open_scenes(Path(args.dir))
    out = write_png(contact_sheet(scenes, args.frames, args.width), args.out)
    print(f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------- manifests
_RECIPE_FLAGS = (
    "towns",
    "routes_per_town",
    "route_seed",
    "weathers",
    "frames",
    "size",
    "seed_frames",
    "stride",
    "samples_per_task",
    "seed",
)


def _recipe(args: argparse.Namespace):
    from pydantic import TypeAdapter, ValidationError

    from schemas.job import Recipe
    from schemas.user_yaml import read_yaml

    if args.recipe:
        data, source = read_yaml(args.recipe, "recipe"), args.recipe
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a recipe is a mapping of keys")
    elif args.lmdrive:
        data, source = {"source": "lmdrive", "root": args.lmdrive}, "--lmdrive"
    else:
        data, source = {"source": "procedural"}, "command line"
    data.update({k: getattr(args, k) for k in _RECIPE_FLAGS if getattr(args, k, None) is not None})
    if data.get("source") == "lmdrive":
        extra = [
            k
            for k in ("towns", "routes_per_town", "route_seed", "weathers", "frames", "size")
            if k in data
        ]
        if extra:
            raise ConfigError(
                f"{source}: --{extra[0].replace('_', '-')} applies to procedural recipes only"
            )
    try:
        return TypeAdapter(Recipe).validate_python(data)
    except ValidationError as e:
        msg = "; ".join(
            f"{'.'.join(map(str, err['loc'][1:])) or 'recipe'}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"{source}: invalid recipe: {msg}") from None


def cmd_manifest_build(args: argparse.Namespace) -> int:
    from manifests.build import build, count_sources
    from manifests.io import write_manifest

    _out_file(args.out, ".parquet", "a manifest")
    bad = [h for h in args.horizons if h <= 0]
    if bad:
        raise ConfigError(
            f"--horizons {bad}: horizons must be positive (a job checks them against "
            f"its model's frames_per_step)"
        )
    recipe = _recipe(args)
    with _progress(count_sources(recipe), "build manifest", unit="drive") as bar:
        table = build(recipe, args.horizons, progress=bar.update)
    out = write_manifest(table, args.out)
    print(f"wrote {out}: {len(table)} tasks")
    return 0


def cmd_manifest_curate(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from manifests.curate import curate
    from manifests.io import read_manifest, write_manifest
    from schemas.job import CurateSpec

    _out_file(args.out, ".parquet", "a manifest")
    fields = {
        k: getattr(args, k) for k in CurateSpec.model_fields if getattr(args, k, None) is not None
    }
    try:
        spec = CurateSpec(**fields)
    except ValidationError as e:
        msg = "; ".join(f"{_curate_flag(err['loc'])}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid curation: {msg}") from None
    table = read_manifest(args.manifest)
    result = curate(table, spec)
    if len(result) == 0:
        raise BadInputError(
            f"{args.manifest}: no task of its {len(table)} passes this curation; nothing written"
        )
    out = write_manifest(result, args.out)
    print(f"wrote {out}: {len(result)} tasks (from {len(table)} in {args.manifest})")
    return 0


_CURATE_FLAGS = {
    "categories": "category",
    "instruction_ids": "instruction-id",
    "weathers": "weather",
}


def _curate_flag(loc: tuple) -> str:
    """The command-line flag of a curation field (``categories`` is given as ``--category``)."""
    name = str(loc[0])
    return "--" + _CURATE_FLAGS.get(name, name.replace("_", "-"))


def cmd_manifest_stats(args: argparse.Namespace) -> int:
    from manifests.io import read_manifest
    from manifests.stats import format_stats

    print(format_stats(read_manifest(args.manifest)))
    return 0


# ----------------------------------------------------------------------------- jobs
def cmd_job_validate(args: argparse.Namespace) -> int:
    from lmgendrive.train.check import check_recipe
    from pipeline.jobcheck import check_job
    from schemas.user_yaml import read_yaml

    for path in args.jobs:
        spec = read_yaml(path, "job spec")
        if isinstance(spec, dict) and "stages" in spec and "horizons" not in spec:  # a recipe
            print(check_recipe(path))
            continue
        c = check_job(path)
        output = {
            "new": "new",
            "resume": f"resumes it: {len(c.done)} of {len(c.units)} units done",
        }[c.location.state]
        r = c.job.resources
        print(
            f"{path}: ok ({c.job.name}: model {c.job.model}, {len(c.manifest)} tasks in "
            f"{len(c.units)} units, {c.scenes} scene(s), horizons {c.job.horizons}, output "
            f"{c.job.output} ({output}))\n  not checked: whether the Ray cluster can hold "
            f"{r.workers} worker(s) x {r.gpus_per_worker:g} GPU(s), {r.cpus_per_worker:g} "
            f"CPU(s) (generate checks it when it attaches, before writing)"
        )
    return 0


def cmd_job_schema(args: argparse.Namespace) -> int:
    from schemas.job import json_schema

    sys.stdout.write(json_schema())
    return 0


# ----------------------------------------------------------------------------- generation
def cmd_generate(args: argparse.Namespace) -> int:
    from pipeline.driver import run_job
    from schemas.job import load_job

    job = load_job(args.job)
    s = run_job(job, executor=args.executor, ray_address=args.ray_address, overwrite=args.overwrite)
    print(
        f"{job.name}: {s.ran} unit(s) generated, {s.skipped} already done, {s.samples} samples, "
        f"{s.frames} frames in {s.seconds:.1f} s ({s.frames_per_s:.1f} frames/s) -> {s.output}"
    )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pipeline.inspect_output import report
    from storage.store import open_storage

    print(report(open_storage(args.output, args.endpoint_url, args.region)))
    return 0


# ----------------------------------------------------------------------------- demo
def _demo_job(path: str) -> Path:
    """``path`` as given, else (the default, relative) among the shipped job specs: the checkout's
    ``jobs/``, or the installed package's (:func:`schemas.shipped.data_root`)."""
    p = Path(path)
    if p.is_file() or p.is_absolute() or not (data_root() / p).is_file():
        return p
    return data_root() / p


def fit_cpu_workers(job: JobSpec, cpus: int | None = None) -> JobSpec:
    """``job`` with no more CPU-only workers than this machine's cores hold (``lmgd demo`` starts
    its own Ray cluster here; a laptop with fewer cores than the demo asks for still runs it)."""
    r = job.resources
    cpus = cpus or os.cpu_count() or 1
    fit = max(1, int(cpus // r.cpus_per_worker))
    if r.gpus_per_worker or r.workers <= fit:
        return job
    return job.model_copy(update={"resources": r.model_copy(update={"workers": fit})})


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.driver import run_job
    from pipeline.qa_cli import run_and_print
    from qa.config import qa_config, report_dir_of
    from qa.run import without_missing_weights
    from schemas.job import load_job

    job = fit_cpu_workers(load_job(_demo_job(args.job)))
    if args.out:
        job = job.model_copy(update={"output": args.out})
    print(
        f"[1/2] {job.name}: seed scenes, manifest and generation with model {job.model!r}, "
        f"horizons {job.horizons} -> {job.output}",
        flush=True,
    )
    s = run_job(job, executor=args.executor, ray_address="local", overwrite=args.overwrite)
    print(
        f"      {s.ran} unit(s) generated, {s.skipped} already done, {s.samples} samples, "
        f"{s.frames} frames in {s.seconds:.0f} s",
        flush=True,
    )
    config = without_missing_weights(
        qa_config(job.output, report_dir_of(job.output), job.qa, job, executor="local")
    )
    print(f"[2/2] QA: {', '.join(config.metrics)}", flush=True)
    result = run_and_print(config, indent="      ")
    print(
        f"report: {config.report}/report.md "
        f"(with horizon.png and {len(result.gallery)} gallery sheet(s))"
    )
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmgd", description="LMGenDrive synthetic driving-video pipeline."
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    demo = verbs.add_parser(
        "demo",
        help="run the main job on the embedded default",
        description="Render procedural seed scenes, build a manifest with counterfactual "
        "instructions, generate horizons 8-64 with the embedded checkpoint on a "
        "local Ray cluster, write shards, run QA and draw the report's gallery. "
        "Reruns resume.",
    )
    demo.add_argument("--job", default=DEMO_JOB, help=f"job spec (default: {DEMO_JOB})")
    demo.add_argument("--out", help="output folder (default: the job's, out/demo)")
    demo.add_argument(
        "--executor",
        choices=("ray", "local"),
        default="ray",
        help="ray: a local Ray cluster (default); local: in this process",
    )
    demo.add_argument("--overwrite", action="store_true", help="start clean instead of resuming")
    demo.set_defaults(func=cmd_demo)

    scenes = verbs.add_parser(
        "scenes", help="seed scenes: render procedural drives, draw contact sheets"
    )
    sv = scenes.add_subparsers(dest="scenes_verb", metavar="VERB", required=True)
    r = sv.add_parser(
        "render",
        help="render one procedural drive into an LMDrive-format dataset root",
        description="Simulate and render one drive; write it as an LMDrive route folder "
        "OUT/<name>/ and update OUT/dataset_index.txt.",
    )
    r.add_argument("--town-seed", type=int, required=True)
    r.add_argument("--route-seed", type=int, required=True)
    r.add_argument(
        "--weather",
        default="clear_noon",
        help="clear_noon, cloudy, rain, fog, sunset or night (default: clear_noon)",
    )
    r.add_argument("--frames", type=int, default=200, help="frames at 10 Hz (default: 200)")
    r.add_argument(
        "--size", type=_size, default=(128, 128), help="image size N or HxW (default: 128)"
    )
    r.add_argument(
        "--turns",
        nargs="*",
        default=[],
        metavar="TURN",
        help="force the first maneuvers: left, straight, right",
    )
    r.add_argument("--out", required=True, help="dataset root folder")
    r.add_argument(
        "--overwrite", action="store_true", help="replace an existing route of the same name"
    )
    r.set_defaults(func=cmd_scenes_render)
    s = sv.add_parser("sheet", help="draw a contact sheet of a route folder or dataset root")
    s.add_argument("dir", help="route folder or dataset root (with dataset_index.txt)")
    s.add_argument("--out", required=True, help="PNG file to write")
    s.add_argument("--frames", type=int, default=4, help="frames per route (default: 4)")
    s.add_argument("--width", type=int, default=672, help="sheet width in pixels (default: 672)")
    s.set_defaults(func=cmd_scenes_sheet)

    manifest = verbs.add_parser(
        "manifest", help="task manifests: build, curate corner cases, count"
    )
    mv = manifest.add_subparsers(dest="manifest_verb", metavar="VERB", required=True)
    b = mv.add_parser(
        "build",
        help="build a manifest of tasks from seed scenes",
        description="Enumerate seed points of procedural drives (default) or of an LMDrive "
        "root, one task per seed point and horizon.",
    )
    src = b.add_mutually_exclusive_group()
    src.add_argument("--recipe", help="YAML recipe (the 'manifest.build' section of a job)")
    src.add_argument("--lmdrive", metavar="ROOT", help="LMDrive-format dataset root")
    b.add_argument(
        "--horizons",
        type=int,
        nargs="+",
        required=True,
        help="future frames, multiples of the frames_per_step of the model to run",
    )
    b.add_argument("--towns", type=int, nargs="+", help="procedural town seeds (default: 1)")
    b.add_argument("--routes-per-town", type=int, help="drives per town and weather (default: 1)")
    b.add_argument("--route-seed", type=int, help="first route seed (default: 0)")
    b.add_argument("--weathers", nargs="+", help="procedural weathers (default: clear_noon)")
    b.add_argument("--frames", type=int, help="recorded frames per procedural drive (default: 200)")
    b.add_argument("--size", type=int, help="procedural image size (default: 128)")
    b.add_argument("--seed-frames", type=int, help="seed frames per task (default: 8)")
    b.add_argument("--stride", type=int, help="frames between seed points (default: 40)")
    b.add_argument("--samples-per-task", type=int, help="samples per task (default: 1)")
    b.add_argument("--seed", type=int, help="base sampling seed (default: 0)")
    b.add_argument("--out", required=True, help="manifest to write (.parquet)")
    b.set_defaults(func=cmd_manifest_build)

    c = mv.add_parser(
        "curate", help="select corner cases by instruction and tags; expand counterfactuals"
    )
    c.add_argument("manifest", help="input manifest (.parquet or .jsonl)")
    c.add_argument("--out", required=True, help="manifest to write (.parquet)")
    c.add_argument("--category", dest="categories", nargs="+", help="turn, follow, notice, other")
    c.add_argument("--instruction-id", dest="instruction_ids", type=int, nargs="+")
    c.add_argument("--text", help="regular expression matched against the instruction text")
    c.add_argument("--weather", dest="weathers", nargs="+")
    for tag in ("misleading", "night", "pedestrians", "red-light", "junction"):
        c.add_argument(
            f"--{tag}",
            dest=tag.replace("-", "_"),
            action=argparse.BooleanOptionalAction,
            help=f"keep only tasks with (or, --no-{tag}, without) this tag",
        )
    c.add_argument(
        "--counterfactual",
        action="store_true",
        help="add every feasible alternative (left / straight / right / stop) at junctions",
    )
    c.add_argument(
        "--with-misleading",
        action="store_true",
        help="also add infeasible turns, flagged misleading",
    )
    c.add_argument("--cap-per-category", type=int, help="keep at most N tasks per category")
    c.add_argument("--sample", type=int, help="keep N tasks at random")
    c.add_argument("--seed", type=int, help="seed of the random choices (default: 0)")
    c.set_defaults(func=cmd_manifest_curate)

    st = mv.add_parser("stats", help="count tasks per category, horizon, weather and tag")
    st.add_argument("manifest", help="manifest (.parquet or .jsonl)")
    st.set_defaults(func=cmd_manifest_stats)

    g = verbs.add_parser(
        "generate",
        help="run a job: generate samples into WebDataset shards",
        description="Generate every work unit of JOB not yet done (reruns resume).",
    )
    g.add_argument("job", help="job spec YAML")
    add_executor_arguments(g, "GPU-pinned generators")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="skip units already done (the default)")
    mode.add_argument("--overwrite", action="store_true", help="delete the output and start clean")
    g.set_defaults(func=cmd_generate)

    ins = verbs.add_parser("inspect", help="count an output's samples and verify its shards")
    ins.add_argument("output", help="output directory or s3://bucket/prefix")
    ins.add_argument("--endpoint-url", help="S3-compatible endpoint (else AWS_ENDPOINT_URL)")
    ins.add_argument("--region", help="S3 region")
    ins.set_defaults(func=cmd_inspect)

    job = verbs.add_parser("job", help="job specs: validate, JSON Schema")
    jv = job.add_subparsers(dest="job_verb", metavar="VERB", required=True)
    v = jv.add_parser(
        "validate", help="check job specs, their manifests and scenes (no model is loaded)"
    )
    v.add_argument("jobs", nargs="+", metavar="JOB", help="job spec YAML file(s)")
    v.set_defaults(func=cmd_job_validate)
    sc = jv.add_parser("schema", help="print the JSON Schema of job specs")
    sc.set_defaults(func=cmd_job_schema)

    from lmgendrive.train.cli import add_parser as add_train_parser

    add_train_parser(verbs)

    from pipeline.qa_cli import add_parser as add_qa_parser

    add_qa_parser(verbs)

    from pipeline.drive_cli import add_parser as add_drive_parser

    add_drive_parser(verbs)
    return p


# libraries whose debug logs print credentials or flood the output: kept at WARNING under -v
QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "filelock", "PIL", "matplotlib")


def _configure_logging(verbose: bool) -> None:
    """Log to stderr through :class:`~schemas.secrets.RedactingFilter`; ``-v``: our debug."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "lmgd", False)]:
        root.removeHandler(old)  # main() called again in one process (tests)
    handler.lmgd = True
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lmgd``; returns the exit code. Every message it prints is redacted
    (:func:`~schemas.secrets.redact`); a crash prints a one-line summary, its traceback with
    ``-v``."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        _check_counts(args)
        return int(args.func(args) or 0)
    except LmgdError as e:
        print(f"lmgd: error: {redact(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("lmgd: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`
        sys.stderr.close()
        return 0
    except Exception as e:  # a bug, not an input: say so in one line, the traceback with -v
        if args.verbose:
            print(redact(traceback.format_exc()), file=sys.stderr, end="")
        summary = redact(f"{type(e).__name__}: {e}").splitlines()[0]
        print(
            f"lmgd: internal error: {summary}"
            + ("" if args.verbose else " (rerun with -v for the traceback)"),
            file=sys.stderr,
        )
        return 1


def _check_counts(args: argparse.Namespace) -> None:
    for key in (
        "frames",
        "frames_per_drive",
        "width",
        "sample",
        "cap_per_category",
        "stride",
        "seed_frames",
        "samples_per_task",
        "routes_per_town",
    ):
        value = getattr(args, key, None)
        if value is not None and value < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= 1, got {value}")


if __name__ == "__main__":
    sys.exit(main())
