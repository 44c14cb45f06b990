"""The QA feature worker: a Ray actor per GPU (or CPU slot) running :class:`qa.extract.FeatureRunner`.

Each actor loads the extractors once and accumulates the statistics of the shards it is given; the
driver takes every actor's statistics after each horizon and merges them (statistics merge exactly,
so the result does not depend on how shards were spread). Only statistics and small per-sample
records cross the object store, never frames. QA keeps no partial state: if an actor dies the run
fails with the reason and can simply be rerun.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections import Counter, deque
from collections.abc import Iterator

from lmgendrive.errors import LmgdError, RunFailure
from qa.config import QAConfig
from qa.extract import Accumulator, FeatureRunner, WorkItem

log = logging.getLogger(__name__)

INFLIGHT_PER_ACTOR = 2
START_TIMEOUT_S = float(os.environ.get("LMGD_ACTOR_START_TIMEOUT", "300"))


class QAFeatureWorker(FeatureRunner):
    """:class:`FeatureRunner` plus a description of where it runs (the Ray actor class)."""

    def info(self) -> dict:
        return {"host": platform.node(), "pid": os.getpid(), "device": str(self.device),
                "extractors": self.descriptions()}


def _unwrap(e: BaseException) -> BaseException:
    """A user-facing error raised inside an actor, else a :class:`RunFailure` naming the cause."""
    cause = getattr(e, "cause", None) or e
    if isinstance(cause, LmgdError):
        return cause
    text = f"{type(cause).__name__}: {cause}".splitlines()[0][:500]
    return RunFailure(f"a QA worker failed ({text}); QA keeps no partial state, rerun `lmgd qa`")


def _start(config: QAConfig) -> tuple[list, dict[str, str]]:
    import ray

    env = {k: v for k, v in os.environ.items() if k.startswith("LMGD_") or k == "TORCH_HOME"}
    remote = ray.remote(QAFeatureWorker).options(num_gpus=config.gpus_per_worker, num_cpus=config.cpus_per_worker,
                                                 max_restarts=0, max_task_retries=0, runtime_env={"env_vars": env})
    actors = [remote.remote(config) for _ in range(config.workers)]
    refs = [a.info.remote() for a in actors]
    deadline = time.monotonic() + START_TIMEOUT_S
    ready, pending = ray.wait(refs, num_returns=len(refs), timeout=max(0.0, deadline - time.monotonic()))
    if pending:
        for a in actors:
            ray.kill(a, no_restart=True)
        raise RunFailure(f"{len(pending)} of {len(actors)} QA workers could not be scheduled within "
                         f"{START_TIMEOUT_S:.0f} s: each asks for {config.gpus_per_worker:g} GPU(s) and "
                         f"{config.cpus_per_worker:g} CPU(s); the cluster has {ray.cluster_resources()}")
    try:
        infos = ray.get(ready)
    except Exception as e:  # noqa: BLE001 - report why the extractors could not load
        for a in actors:
            ray.kill(a, no_restart=True)
        raise _unwrap(e) from None
    for info in infos:
        log.info("QA worker ready: %s", info)
    return actors, infos[0]["extractors"]


def _horizon(actors: list, items: list[WorkItem], progress) -> tuple[Accumulator, list[dict]]:
    import ray

    queue = deque(items)
    inflight: dict[object, tuple[WorkItem, int]] = {}
    load: Counter[int] = Counter()
    records: list[dict] = []
    while queue or inflight:
        for i, actor in enumerate(actors):
            while queue and load[i] < INFLIGHT_PER_ACTOR:
                item = queue.popleft()
                inflight[actor.run.remote(item)] = (item, i)
                load[i] += 1
        done, _ = ray.wait(list(inflight), num_returns=1)
        for ref in done:
            item, i = inflight.pop(ref)
            load[i] -= 1
            try:
                records += ray.get(ref)
            except Exception as e:  # noqa: BLE001 - actor death or an error inside the actor
                raise _unwrap(e) from None
            progress(len(item.samples))
    merged = Accumulator()
    for acc in ray.get([a.take.remote() for a in actors]):
        merged.merge(acc)
    return merged, records


def run_on_ray(config: QAConfig, work: dict[int, list[WorkItem]],
               progress) -> tuple[Iterator[tuple[int, Accumulator, list[dict]]], dict[str, str]]:
    """Start ``config.workers`` actors; returns the per-horizon results (a generator that shuts the
    actors down when exhausted) and the extractor descriptions."""
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(address=None if config.ray_address in (None, "local") else config.ray_address,
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
        started = True
    try:
        actors, descriptions = _start(config)
    except BaseException:
        if started:
            ray.shutdown()
        raise

    def stream() -> Iterator[tuple[int, Accumulator, list[dict]]]:
        try:
            for h, items in work.items():
                acc, records = _horizon(actors, items, progress)
                yield h, acc, records
        finally:
            for a in actors:
                ray.kill(a, no_restart=True)
            if started:
                ray.shutdown()

    return stream(), descriptions
