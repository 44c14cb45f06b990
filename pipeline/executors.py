"""Running units: in-process, or on Ray actors pinned to GPUs with retries and actor replacement.

``ray.util.ActorPool`` neither replaces dead actors nor reports per-item errors, so the Ray
executor is a small loop over ``ray.wait``: at most ``INFLIGHT_PER_ACTOR`` units queued per actor
(backpressure), a dead actor is replaced and its units retried, a unit that keeps failing is
reported after ``max_retries`` retries while the rest goes on.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from lmgendrive.errors import LmgdError, RunFailure
from pipeline.units import Unit

log = logging.getLogger(__name__)

INFLIGHT_PER_ACTOR = 2
ACTOR_START_TIMEOUT_S = float(os.environ.get("LMGD_ACTOR_START_TIMEOUT", "300"))

OnDone = Callable[[Unit, dict], None]


@dataclass
class Outcome:
    markers: list[dict] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # unit name -> last error
    retries: int = 0
    actors_replaced: int = 0
    dispatch_started: float = 0.0  # perf_counter() when every worker was ready
    queue_drained: float = 0.0  # perf_counter() when the last unit was handed to a worker


def _error_text(e: BaseException) -> str:
    cause = getattr(e, "cause", None) or e
    return f"{type(cause).__name__}: {cause}".splitlines()[0][:500]


def run_local(units: list[Unit], make_runner: Callable[[], object], max_retries: int, on_done: OnDone) -> Outcome:
    """Run every unit in this process with one runner (one model load)."""
    out = Outcome()
    runner = make_runner()
    out.dispatch_started = time.perf_counter()
    for unit in units:
        for attempt in range(max_retries + 1):
            try:
                marker = runner.run(unit)
            except LmgdError:
                raise
            except Exception as e:  # noqa: BLE001 - a unit's failure is reported, the job goes on
                log.warning("%s failed (attempt %d): %s", unit.name, attempt + 1, _error_text(e))
                log.debug("%s", traceback.format_exc())
                out.failed[unit.name] = _error_text(e)
                out.retries += attempt < max_retries
                continue
            out.failed.pop(unit.name, None)
            out.markers.append(marker)
            on_done(unit, marker)
            break
    return out


def run_ray(units: list[Unit], actor_class, actor_args: tuple, workers: int, gpus: float, cpus: float,
            max_retries: int, on_done: OnDone) -> Outcome:
    """Run units on ``workers`` Ray actors, each requesting ``gpus`` GPUs and ``cpus`` CPUs."""
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    env = {k: v for k, v in os.environ.items() if k.startswith("LMGD_")}  # e.g. LMGD_WEIGHTS_DIR
    # a class that says it can (UnitRunner) runs its queued units in threads that overlap their stages
    concurrency = min(INFLIGHT_PER_ACTOR, getattr(actor_class, "concurrent_units", 1))
    remote_cls = ray.remote(actor_class).options(num_gpus=gpus, num_cpus=cpus, max_restarts=0, max_task_retries=0,
                                                  max_concurrency=concurrency, runtime_env={"env_vars": env})
    out = Outcome()
    actors: dict[int, tuple[object, int]] = {}

    def start(i: int, gen: int) -> None:
        actors[i] = (remote_cls.remote(*actor_args), gen)

    for i in range(workers):
        start(i, 0)
    _wait_for_actors([a for a, _ in actors.values()], gpus, cpus)

    queue = deque(units)
    attempts: Counter[str] = Counter()
    inflight: dict[object, tuple[Unit, int, int]] = {}
    load: Counter[int] = Counter()  # units queued or running per actor
    out.dispatch_started = time.perf_counter()
    while queue or inflight:
        for i, (actor, gen) in actors.items():
            while queue and load[i] < INFLIGHT_PER_ACTOR:
                unit = queue.popleft()
                inflight[actor.run.remote(unit)] = (unit, i, gen)
                load[i] += 1
                if not queue:
                    out.queue_drained = time.perf_counter()
        refs = list(inflight)
        done, _ = ray.wait(refs, num_returns=1, timeout=1.0)
        if done:  # collect everything else that is ready too, without waiting
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in done:
            unit, i, gen = inflight.pop(ref)
            load[i] -= 1
            try:
                marker = ray.get(ref)
            except (RayActorError, ActorDiedError, ActorUnavailableError) as e:
                if actors[i][1] == gen:  # replace once per death, however many units it held
                    log.warning("worker %d died (%s); replacing it", i, _error_text(e))
                    ray.kill(actors[i][0], no_restart=True)
                    start(i, gen + 1)
                    out.actors_replaced += 1
                _retry(unit, e, attempts, max_retries, queue, out)
            except Exception as e:  # noqa: BLE001 - the unit raised inside the actor
                _retry(unit, e, attempts, max_retries, queue, out)
            else:
                out.failed.pop(unit.name, None)
                out.markers.append(marker)
                on_done(unit, marker)
    for actor, _ in actors.values():
        ray.kill(actor, no_restart=True)
    return out


def _retry(unit: Unit, e: BaseException, attempts: Counter, max_retries: int, queue: deque, out: Outcome) -> None:
    attempts[unit.name] += 1
    out.failed[unit.name] = _error_text(e)
    if attempts[unit.name] <= max_retries:
        log.warning("%s failed (attempt %d), retrying: %s", unit.name, attempts[unit.name], out.failed[unit.name])
        out.retries += 1
        queue.append(unit)
    else:
        log.error("%s failed %d times, giving up: %s", unit.name, attempts[unit.name], out.failed[unit.name])


def _wait_for_actors(actors: list, gpus: float, cpus: float) -> None:
    """Actors that ask for more than the cluster has stay pending silently: fail with the numbers."""
    import ray

    pending = [a.info.remote() for a in actors]
    deadline = time.monotonic() + ACTOR_START_TIMEOUT_S
    while pending:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=max(0.0, deadline - time.monotonic()))
        for ref in ready:
            try:
                info = ray.get(ref)
                log.info("worker ready: %s", info)
            except Exception as e:  # noqa: BLE001 - report why the model could not load
                raise RunFailure(f"a generator worker failed to start: {_error_text(e)}") from None
        if pending and time.monotonic() >= deadline:
            raise RunFailure(
                f"{len(pending)} of {len(actors)} generator workers could not be scheduled within "
                f"{ACTOR_START_TIMEOUT_S:.0f} s: each asks for {gpus:g} GPU(s) and {cpus:g} CPU(s); the cluster "
                f"has {ray.cluster_resources()}. Lower resources.workers / gpus_per_worker or add nodes.")
