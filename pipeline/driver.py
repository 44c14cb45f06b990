"""The driver: job spec -> pre-flight -> attach the cluster -> first writes -> dispatch -> index
and stats.

Nothing is written before every check has passed: :func:`~pipeline.jobcheck.preflight` (spec,
checkpoint, manifest, scenes, output location), then the cluster is attached and refuses workers
it cannot hold, and only then :func:`write_start` writes ``job.yaml`` and the manifest. A rerun
resumes: units whose completion marker exists are skipped.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline.executor import Outcome, Policy, Resources, open_pool, ray_cluster
from pipeline.jobcheck import Preflight, preflight
from pipeline.output_location import JOB_FILE, written_by_job
from schemas.errors import RunFailure
from schemas.job import JobSpec
from schemas.spec import validate
from schemas.tables import INDEX
from schemas.units import Unit
from storage.store import Storage

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


@contextmanager
def _no_cluster(*_) -> Iterator[None]:
    yield


def write_start(plan: Preflight) -> None:
    """The first writes of a checked job: on ``--overwrite`` remove what the old job wrote, then
    ``job.yaml`` (which marks the location as a job's output) and the manifest."""
    location, storage = plan.location, plan.location.storage
    if location.state == "replace":
        # what a job writes, listed again: anything added since the check stays
        storage.remove(n for n in storage.top_level() if written_by_job(n))
    spec = plan.job.model_dump(mode="json")
    if location.previous != spec:  # new, replaced, or resumed with other resources
        storage.put_bytes(JOB_FILE, yaml.safe_dump(spec, sort_keys=True).encode())
    if not storage.exists("manifest.parquet"):
        sink = pa.BufferOutputStream()
        pq.write_table(plan.manifest, sink)
        storage.put_bytes("manifest.parquet", sink.getvalue().to_pybytes())


def prepare(job: JobSpec, overwrite: bool = False, progress=None) -> Preflight:
    """:func:`~pipeline.jobcheck.preflight` and :func:`write_start`: a job ready to dispatch."""
    plan = preflight(job, overwrite, progress)
    write_start(plan)
    return plan


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
    with progress(None, "manifest", "drive", enabled=progress_bar) as bar:
        plan = preflight(job, overwrite, progress=bar.update)
    job, storage, units, done, pending = (
        plan.job,
        plan.location.storage,
        plan.units,
        plan.done,
        plan.pending,
    )
    summary = RunSummary(storage.uri, len(units), len(done), len(pending))
    log.info("%d units, %d done already, %d to run", len(units), len(done), len(pending))

    runner_class = runner_class or UnitRunner
    args = (job.model_dump(mode="json"), code_version())
    total = sum(len(u.samples) for u in pending)
    r = job.resources
    resources = Resources(r.workers, r.gpus_per_worker, r.cpus_per_worker)
    attach = ray_cluster if executor == "ray" and pending else _no_cluster
    with (
        attach(ray_address, resources, job.name),  # refuses workers it cannot hold: no write yet
        progress(total, "generate", "sample", enabled=progress_bar) as bar,
    ):
        write_start(plan)
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
