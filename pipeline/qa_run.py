"""A QA run: plan the work items of a job output, extract features with :mod:`workers.qa` stages
on the executor's pool (in-process or Ray actors), one horizon at a time, and hand each horizon's
merged statistics to :func:`qa.run.evaluate` for the figures and the report.

QA keeps no partial state: the pool fails fast, and a failed run is simply rerun. A damaged shard
(truncated, corrupt, not what the index lists) is the exception: it is left out, the figures are
made of the other samples and the report notes it, then the run fails naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from pipeline.executor import Policy, Pool, Resources, open_pool
from qa.config import QAConfig
from qa.extract import Accumulator, ShardResult, WorkItem
from qa.result import QAResult
from qa.run import evaluate, plan, preflight
from schemas.errors import RunFailure
from storage.store import open_storage
from workers.qa import QAFeatureWorker

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


def run_qa(
    config: QAConfig, progress: Progress | None = None, on_start: Progress | None = None
) -> QAResult:
    """Evaluate the job output ``config.output`` and write the QA outputs to ``config.report``;
    ``on_start`` gets the number of samples, ``progress`` each finished shard's count. Raises
    :class:`RunFailure` naming the damaged shards left out, once the report is written."""
    progress = progress or (lambda n: None)
    preflight(config)
    storage = open_storage(config.output, config.endpoint_url, config.region)
    work = plan(storage)
    if on_start is not None:
        on_start(sum(len(item.samples) for items in work.values() for item in items))
    for reason in config.skipped().values():
        log.info("%s", reason)
    resources = Resources(
        config.workers,
        config.gpus_per_worker,
        config.cpus_per_worker,
        hint="lower --workers (or the job's resources), or set resources.gpus_per_worker: 0",
    )
    with open_pool(
        config.executor,
        QAFeatureWorker,
        (config,),
        resources,
        Policy(fail_fast=True),
        config.ray_address,
        what="qa",
    ) as pool:
        extractors = pool.infos()[0]["extractors"]
        result = evaluate(config, storage, _horizons(pool, work, progress), extractors)
    if result.excluded:
        raise RunFailure(
            f"{len(result.excluded)} damaged shard(s) left out; the figures in {config.report} "
            "exclude their samples:\n  " + "\n  ".join(result.excluded.values()) + "\n"
            "Delete each one and its marker (_done/<unit>.json), rerun `lmgd generate JOB` to "
            "redo them, then `lmgd qa` again"
        )
    return result


def _horizons(
    pool: Pool, work: dict[int, list[WorkItem]], progress: Progress
) -> Iterator[tuple[int, Accumulator, list[dict], dict[str, str]]]:
    """Per horizon: the statistics merged over every stage instance, the per-sample records, and
    the damaged shards left out (shard -> why)."""
    for h, items in work.items():
        outcome = pool.map(items, on_done=lambda item, _result: progress(len(item.samples)))
        merged = Accumulator()
        for acc in pool.gather("take"):
            merged.merge(acc)
        results: list[ShardResult] = outcome.results
        sizes = {item.shard: len(item.samples) for item in items}
        excluded = {
            r.shard: f"{r.excluded}; its {sizes[r.shard]} sample(s) at horizon {h} are left out"
            for r in results
            if r.excluded
        }
        yield h, merged, [record for r in results for record in r.records], excluded
