"""The driver: job spec -> manifest -> units -> skip done units -> dispatch -> index and stats.

Everything a worker needs is checked before any worker starts (model reference, manifest rows,
scenes, output location), and the job's sampler is resolved over the checkpoint's
(:func:`resolve_job`) before anything is written. A rerun resumes: units whose completion marker
exists are skipped.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from manifests.build import build
from manifests.curate import curate
from manifests.io import read_manifest
from pipeline.executor import Outcome, Policy, Resources, open_pool
from pipeline.jobcheck import check_manifest_scenes, check_model
from schemas.errors import BadInputError, RunFailure
from schemas.job import JobSpec
from schemas.sampler import SamplerOverride
from schemas.spec import validate
from schemas.tables import INDEX, TASK
from schemas.units import Unit, make_units
from storage.store import Storage, open_storage

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    output: str
    units: int
    skipped: int
    ran: int
    failed: dict[str, str] = field(default_factory=dict)
    samples: int = 0
    frames: int = 0
    seconds: float = 0.0
    generate_seconds: float = 0.0  # from the moment every worker was ready until the last unit

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def code_version() -> str:
    """The package version, plus the git commit when run from a checkout."""
    v = version("lmgendrive")
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{v}+{commit}" if commit else v


def resolve_job(job: JobSpec) -> JobSpec:
    """``job`` with every sampler key set: its own values over those of the checkpoint's sampler
    (read without loading weights). What the workers run, and what ``job.yaml`` and every sample's
    metadata record."""
    sampler = job.sampler.over(check_model(job.model, job.horizons).sampler, f"{job.name}: sampler")
    return job.model_copy(update={"sampler": SamplerOverride(**sampler.model_dump())})


def prepare(job: JobSpec, storage: Storage, overwrite: bool, progress=None) -> pa.Table:
    """Check the output location, write provenance, build (or reuse) the manifest of ``job`` as
    :func:`resolve_job` returns it."""
    job.sampler.resolved()  # provenance records what runs: no sampler key may be left to the worker
    storage.check()
    if overwrite:
        storage.delete_all()
        storage.check()
    spec_yaml = yaml.safe_dump(job.model_dump(mode="json"), sort_keys=True)
    if storage.exists("job.yaml"):
        if storage.get_bytes("job.yaml").decode() != spec_yaml:
            raise BadInputError(
                f"{storage.uri} already holds the output of a different job spec; rerun with "
                f"--overwrite to replace it, or choose another output"
            )
        if storage.exists("manifest.parquet"):
            return validate(
                pq.read_table(pa.BufferReader(storage.get_bytes("manifest.parquet"))),
                TASK,
                storage.url("manifest.parquet"),
            )
    table = _manifest(job, progress)
    check_manifest_scenes(table, job.horizons, "manifest")
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.put_bytes("manifest.parquet", sink.getvalue().to_pybytes())
    storage.put_bytes("job.yaml", spec_yaml.encode())
    return table


def _manifest(job: JobSpec, progress) -> pa.Table:
    m = job.manifest
    table = read_manifest(m.path) if m.path is not None else build(m.build, job.horizons, progress)
    if m.path is not None:
        keep = pc.is_in(table.column("horizon"), pa.array(job.horizons, pa.int32()))
        table = table.filter(keep)
        if len(table) == 0:
            raise BadInputError(f"{m.path}: no task has one of the job's horizons {job.horizons}")
    if m.curate is not None:
        table = curate(table, m.curate)
    if len(table) == 0:
        raise BadInputError("the manifest's curation left no task")
    return table


def done_units(storage: Storage, units: list[Unit]) -> set[str]:
    """Units whose marker exists and describes the same samples."""
    by_name = {u.name: u for u in units}
    done = set()
    for key in storage.list("_done/"):
        name = Path(key).stem
        marker = json.loads(storage.get_bytes(key))
        unit = by_name.get(name)
        if unit is None or marker.get("fingerprint") != unit.fingerprint:
            raise BadInputError(
                f"{storage.url(key)}: completion marker of a different unit; the output holds "
                f"another job's results (use --overwrite)"
            )
        done.add(name)
    return done


def write_index(storage: Storage, units: list[Unit]) -> tuple[int, dict]:
    """``index.parquet`` from every completion marker (unit order); returns rows and timings."""
    rows, timings = [], {"seed_s": 0.0, "generate_s": 0.0, "encode_s": 0.0, "publish_s": 0.0}
    for unit in units:
        if not storage.exists(unit.marker_key):
            continue
        marker = json.loads(storage.get_bytes(unit.marker_key))
        rows += marker["samples"]
        for k in timings:
            timings[k] += marker["timings"].get(k, 0.0)
    table = validate(pa.Table.from_pylist(rows, schema=INDEX.arrow), INDEX, "index")
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.put_bytes("index.parquet", sink.getvalue().to_pybytes())
    return len(rows), timings


def run_job(
    job: JobSpec,
    executor: str = "ray",
    ray_address: str | None = "local",
    overwrite: bool = False,
    runner_class=None,
    progress_bar: bool = True,
) -> RunSummary:
    """Generate every unit of ``job`` not yet done; raises :class:`RunFailure` if some unit
    failed."""
    from storage.progress import progress
    from workers.generator import UnitRunner

    t0 = time.perf_counter()
    job = resolve_job(job)
    storage = open_storage(job.output, job.storage.endpoint_url, job.storage.region)
    with progress(None, "manifest", "drive", enabled=progress_bar) as bar:
        manifest = prepare(job, storage, overwrite, progress=bar.update)
    units = make_units(manifest, job.sharding.samples_per_shard)
    done = done_units(storage, units)
    pending = [u for u in units if u.name not in done]
    summary = RunSummary(storage.uri, len(units), len(done), len(pending))
    log.info("%d units, %d done already, %d to run", len(units), len(done), len(pending))

    runner_class = runner_class or UnitRunner
    args = (job.model_dump(mode="json"), code_version())
    total = sum(len(u.samples) for u in pending)
    r = job.resources
    resources = Resources(r.workers, r.gpus_per_worker, r.cpus_per_worker)
    with progress(total, "generate", "sample", enabled=progress_bar) as bar:
        start = time.perf_counter()
        finished: list[str] = []

        def on_done(unit: Unit, marker: dict) -> None:
            finished.append(unit.name)
            summary.samples += len(unit.samples)
            summary.frames += marker["frames"]
            bar.set_postfix(
                units=f"{len(finished)}/{len(pending)}",
                frames_per_s=f"{summary.frames / max(time.perf_counter() - start, 1e-6):.1f}",
            )
            bar.update(len(unit.samples))  # after the postfix: a progress line shows it

        if pending:
            with open_pool(
                executor,
                runner_class,
                args,
                resources,
                Policy(r.max_retries),
                ray_address,
                what=job.name,
            ) as pool:
                outcome = pool.map(pending, on_done)
        else:
            outcome = Outcome()
    summary.failed = outcome.failed
    if outcome.dispatch_started:
        summary.generate_seconds = time.perf_counter() - outcome.dispatch_started
    samples, timings = write_index(storage, units)
    summary.seconds = time.perf_counter() - t0
    stats = {
        "units": len(units),
        "units_skipped": len(done),
        "units_run": len(pending) - len(outcome.failed),
        "units_failed": outcome.failed,
        "samples_in_index": samples,
        "samples_this_run": summary.samples,
        "frames_this_run": summary.frames,
        "seconds": round(summary.seconds, 3),
        "frames_per_s": round(summary.frames_per_s, 3),
        "retries": outcome.retries,
        "workers_replaced": outcome.actors_replaced,
        "executor": executor,
        "workers": job.resources.workers if executor == "ray" else 1,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    storage.put_bytes("stats.json", json.dumps(stats, indent=1, sort_keys=True).encode())
    if outcome.failed:
        lines = "\n  ".join(f"{k}: {v}" for k, v in sorted(outcome.failed.items()))
        raise RunFailure(
            f"{len(outcome.failed)} unit(s) failed after {job.resources.max_retries} retries "
            f"(the other {len(units) - len(outcome.failed)} are complete; "
            f"rerun to retry):\n  {lines}"
        )
    return summary
