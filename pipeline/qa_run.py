"""A QA run: plan the work items of a job output, extract features with :mod:`workers.qa` stages
on the executor's pool (in-process or Ray actors), one horizon at a time, and hand each horizon's
merged statistics to :func:`qa.run.evaluate` for the figures and the report.

QA keeps no partial state: the pool fails fast, and a failed run is simply rerun.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from pipeline.executor import Policy, Pool, Resources, open_pool
from qa.config import QAConfig
from qa.extract import Accumulator, WorkItem
from qa.result import QAResult
from qa.run import evaluate, plan, preflight
from storage.store import open_storage
from workers.qa import QAFeatureWorker

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


def run_qa(
    config: QAConfig, progress: Progress | None = None, on_start: Progress | None = None
) -> QAResult:
    """Evaluate the job output ``config.output`` and write the QA outputs to ``config.report``;
    ``on_start`` gets the number of samples, ``progress`` each finished shard's count."""
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
        return evaluate(config, storage, _horizons(pool, work, progress), extractors)


def _horizons(
    pool: Pool, work: dict[int, list[WorkItem]], progress: Progress
) -> Iterator[tuple[int, Accumulator, list[dict]]]:
    """Per horizon: the statistics merged over every stage instance, and the per-sample records."""
    for h, items in work.items():
        outcome = pool.map(items, on_done=lambda item, _records: progress(len(item.samples)))
        merged = Accumulator()
        for acc in pool.gather("take"):
            merged.merge(acc)
        yield h, merged, [r for records in outcome.results for r in records]
