"""The one executor of generation and QA: a pool of stage instances, in this process or on Ray
actors.

A *stage* is a class from ``workers/``: constructed once per actor with the pool's arguments (the
model is loaded once), ``info()`` describes where it runs, ``run(item)`` processes one item (a
generation unit, a QA shard) and returns a small result; a stage may have other methods the caller
gathers from every instance (QA's ``take()``). A stage class that sets ``concurrent_items`` > 1 is
thread-safe and runs that many queued items at once on its actor.

``ray.util.ActorPool`` neither replaces dead actors nor reports per-item errors, so the Ray pool
is a small loop over ``ray.wait``: at most ``INFLIGHT_PER_ACTOR`` items queued per actor
(backpressure); under the ``retry`` policy a dead actor is replaced and its items retried, and an
item that keeps failing is reported after ``max_retries`` retries while the rest goes on; under
``fail_fast`` the first failure ends the run with its reason (QA keeps statistics inside the
actors, so a lost actor cannot be retried).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from schemas.errors import BadInputError, LmgdError, RunFailure

log = logging.getLogger(__name__)

INFLIGHT_PER_ACTOR = 2
ACTOR_START_TIMEOUT_S = float(os.environ.get("LMGD_ACTOR_START_TIMEOUT", "300"))
EXECUTORS = ("ray", "local")

OnDone = Callable[[object, object], None]  # (item, result)


@dataclass(frozen=True)
class Resources:
    """What each stage instance asks for; ``hint`` names the settings a user changes to fit."""

    workers: int = 1
    gpus: float = 0.0
    cpus: float = 1.0
    hint: str = (
        "set resources.gpus_per_worker: 0 to run on CPU, lower resources.workers / cpus_per_worker"
    )


@dataclass(frozen=True)
class Policy:
    """``max_retries`` per item; ``fail_fast`` ends the run at the first failure instead."""

    max_retries: int = 0
    fail_fast: bool = False


@dataclass
class Outcome:
    results: list = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # item name -> last error
    retries: int = 0
    actors_replaced: int = 0
    dispatch_started: float = 0.0  # perf_counter() when every worker was ready
    queue_drained: float = 0.0  # perf_counter() when the last item was handed to a worker


def error_text(e: BaseException) -> str:
    """One line naming the error (the cause of a Ray task error)."""
    cause = getattr(e, "cause", None) or e
    return f"{type(cause).__name__}: {cause}".splitlines()[0][:500]


def _name(item) -> str:
    return str(getattr(item, "name", item))


def _fail_fast(stage: str, item, e: BaseException) -> BaseException:
    """A user-facing error raised inside a stage, else a :class:`RunFailure` naming item and
    cause."""
    cause = getattr(e, "cause", None) or e
    if isinstance(cause, LmgdError):
        return cause
    return RunFailure(f"{stage} failed on {_name(item)} ({error_text(e)})")


class Pool:
    """Stage instances that process items; use as a context manager (``close`` ends them)."""

    stage_name: str

    def map(self, items: Sequence, on_done: OnDone | None = None) -> Outcome:
        """Run every item; ``on_done(item, result)`` as each one finishes."""
        raise NotImplementedError

    def gather(self, method: str) -> list:
        """``method()`` called on every stage instance, results in instance order."""
        raise NotImplementedError

    def infos(self) -> list[dict]:
        return self.gather("info")

    def close(self) -> None:
        """Release the stage instances."""

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalPool(Pool):
    """One stage instance in this process."""

    def __init__(self, stage_class: type, args: tuple, policy: Policy):
        self.stage_name = stage_class.__name__
        self.policy = policy
        self.stage = stage_class(*args)

    def map(self, items: Sequence, on_done: OnDone | None = None) -> Outcome:
        out = Outcome(dispatch_started=time.perf_counter())
        for item in items:
            for attempt in range(self.policy.max_retries + 1):
                try:
                    result = self.stage.run(item)
                except LmgdError:
                    raise
                except Exception as e:
                    if self.policy.fail_fast:
                        raise
                    log.warning(
                        "%s failed (attempt %d): %s", _name(item), attempt + 1, error_text(e)
                    )
                    log.debug("%s", traceback.format_exc())
                    out.failed[_name(item)] = error_text(e)
                    out.retries += attempt < self.policy.max_retries
                    continue
                out.failed.pop(_name(item), None)
                out.results.append(result)
                if on_done is not None:
                    on_done(item, result)
                break
        out.queue_drained = time.perf_counter()
        return out

    def gather(self, method: str) -> list:
        return [getattr(self.stage, method)()]


class RayPool(Pool):
    """``resources.workers`` Ray actors of the stage, each asking for its GPUs and CPUs."""

    def __init__(self, stage_class: type, args: tuple, resources: Resources, policy: Policy):
        import ray

        self.stage_name = stage_class.__name__
        self.args, self.resources, self.policy = args, resources, policy
        env = {k: v for k, v in os.environ.items() if k.startswith("LMGD_") or k == "TORCH_HOME"}
        self.concurrency = min(INFLIGHT_PER_ACTOR, getattr(stage_class, "concurrent_items", 1))
        self.remote_cls = ray.remote(stage_class).options(
            num_gpus=resources.gpus,
            num_cpus=resources.cpus,
            max_restarts=0,
            max_task_retries=0,
            max_concurrency=self.concurrency,
            runtime_env={"env_vars": env},
        )
        self.actors: dict[int, tuple[object, int]] = {}  # slot -> (actor, generation)
        for i in range(resources.workers):
            self._start(i, 0)
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _start(self, i: int, gen: int) -> None:
        self.actors[i] = (self.remote_cls.remote(*self.args), gen)

    def _wait_ready(self) -> None:
        """Actors that ask for more than the cluster has stay pending silently: fail with the
        numbers."""
        import ray

        actors = [a for a, _ in self.actors.values()]
        pending = [a.info.remote() for a in actors]
        deadline = time.monotonic() + ACTOR_START_TIMEOUT_S
        while pending:
            ready, pending = ray.wait(
                pending, num_returns=len(pending), timeout=max(0.0, deadline - time.monotonic())
            )
            for ref in ready:
                try:
                    log.info("%s ready: %s", self.stage_name, ray.get(ref))
                except Exception as e:  # report why the stage could not start (model, weights)
                    raise _fail_fast(f"a {self.stage_name} worker", "start", e) from None
            if pending and time.monotonic() >= deadline:
                raise self._not_started(len(actors), len(pending))

    def _not_started(self, n_actors: int, n_pending: int) -> RunFailure:
        """Why ``n_pending`` workers were not ready by the start timeout: no room for them in the
        cluster, or placed (their resources held) and still starting, slowly, on a busy machine."""
        import ray

        r = self.resources
        total, free = ray.cluster_resources(), ray.available_resources()
        asks = {k: v for k, v in (("CPU", r.cpus), ("GPU", r.gpus)) if v > 0}
        held = min(
            (int((total.get(k, 0.0) - free.get(k, 0.0)) / v + 1e-9) for k, v in asks.items()),
            default=n_actors,
        )
        unplaced = min(n_pending, max(0, n_actors - held))
        if unplaced:
            return RunFailure(
                f"{unplaced} of {n_actors} {self.stage_name} workers could not be scheduled "
                f"within {ACTOR_START_TIMEOUT_S:.0f} s: each asks for {r.gpus:g} GPU(s) and "
                f"{r.cpus:g} CPU(s); the cluster has {total}. "
                f"{r.hint[0].upper()}{r.hint[1:]}, or add nodes."
            )
        return RunFailure(
            f"{n_pending} of {n_actors} {self.stage_name} workers were placed but had not "
            f"finished starting (loading the model) within {ACTOR_START_TIMEOUT_S:.0f} s: the "
            "machine is busy or slow; set LMGD_ACTOR_START_TIMEOUT (seconds) to wait longer"
        )

    def map(self, items: Sequence, on_done: OnDone | None = None) -> Outcome:
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        out = Outcome(dispatch_started=time.perf_counter())
        queue = deque(items)
        attempts: Counter[str] = Counter()
        inflight: dict[object, tuple[object, int, int]] = {}
        load: Counter[int] = Counter()  # items queued or running per actor
        while queue or inflight:
            for i, (actor, gen) in self.actors.items():
                while queue and load[i] < INFLIGHT_PER_ACTOR:
                    item = queue.popleft()
                    inflight[actor.run.remote(item)] = (item, i, gen)
                    load[i] += 1
                    if not queue:
                        out.queue_drained = time.perf_counter()
            refs = list(inflight)
            done, _ = ray.wait(refs, num_returns=1, timeout=1.0)
            if done:  # collect everything else that is ready too, without waiting
                done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in done:
                item, i, gen = inflight.pop(ref)
                load[i] -= 1
                try:
                    result = ray.get(ref)
                except Exception as e:
                    if self.policy.fail_fast:
                        raise _fail_fast(self.stage_name, item, e) from None
                    if isinstance(e, RayActorError | ActorDiedError | ActorUnavailableError):
                        self._replace(i, gen, e, out)
                    self._retry(item, e, attempts, queue, out)
                    continue
                out.failed.pop(_name(item), None)
                out.results.append(result)
                if on_done is not None:
                    on_done(item, result)
        return out

    def _replace(self, i: int, gen: int, e: BaseException, out: Outcome) -> None:
        import ray

        if self.actors[i][1] == gen:  # replace once per death, however many items it held
            log.warning("worker %d died (%s); replacing it", i, error_text(e))
            ray.kill(self.actors[i][0], no_restart=True)
            self._start(i, gen + 1)
            out.actors_replaced += 1

    def _retry(self, item, e: BaseException, attempts: Counter, queue: deque, out: Outcome) -> None:
        name = _name(item)
        attempts[name] += 1
        out.failed[name] = error_text(e)
        if attempts[name] <= self.policy.max_retries:
            log.warning(
                "%s failed (attempt %d), retrying: %s", name, attempts[name], out.failed[name]
            )
            out.retries += 1
            queue.append(item)
        else:
            log.error("%s failed %d times, giving up: %s", name, attempts[name], out.failed[name])

    def gather(self, method: str) -> list:
        import ray

        try:
            return ray.get([getattr(a, method).remote() for a, _ in self.actors.values()])
        except Exception as e:
            raise _fail_fast(self.stage_name, method, e) from None

    def close(self) -> None:
        import ray

        for actor, _ in self.actors.values():
            ray.kill(actor, no_restart=True)
        self.actors.clear()


def check_fits(resources: Resources, have: dict, what: str) -> None:
    """Refuse at once workers this machine cannot hold (Ray would leave them pending)."""
    r = resources
    gpus, cpus = have.get("GPU", 0.0), have.get("CPU", 0.0)
    if r.workers * r.gpus > gpus or r.workers * r.cpus > cpus:
        raise BadInputError(
            f"{what}: {r.workers} worker(s) x {r.gpus:g} GPU(s) and {r.cpus:g} CPU(s) asked for; "
            f"this machine has {gpus:g} GPU(s) and {cpus:g} CPU(s). "
            f"{r.hint[0].upper()}{r.hint[1:]}, or join a larger cluster with --ray-address auto"
        )


def check_node_fits(resources: Resources, nodes: list[dict], what: str) -> None:
    """Refuse a worker no node of a joined cluster can hold, however long it waits (the cluster
    may grow, so only one worker must fit one node)."""
    r = resources
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    if any(n.get("GPU", 0.0) >= r.gpus and n.get("CPU", 0.0) >= r.cpus for n in alive):
        return
    most = max(alive, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={})
    raise BadInputError(
        f"{what}: each worker asks for {r.gpus:g} GPU(s) and {r.cpus:g} CPU(s); the largest node "
        f"of the cluster has {most.get('GPU', 0.0):g} GPU(s) and {most.get('CPU', 0.0):g} "
        f"CPU(s). {r.hint[0].upper()}{r.hint[1:]}"
    )


@contextmanager
def ray_cluster(address: str | None, resources: Resources, what: str) -> Iterator[None]:
    """Attach to Ray (``'local'`` or None: start a one-node cluster of this machine, shut down at
    the end); workers the cluster cannot hold are refused at once: on a cluster started here, all
    of them; on a joined one, a worker no node can hold. If this process is killed, Ray's head
    processes and workers die with it; its dashboard and runtime-env agents exit about a minute
    later (``bench/driver_death.py``)."""
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(
            address=None if address in (None, "local") else address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
        started = True
    try:
        if started and address in (None, "local"):  # this machine: what it lacks stays lacking
            check_fits(resources, ray.cluster_resources(), what)
        else:
            check_node_fits(resources, ray.nodes(), what)
        yield
    finally:
        if started:
            ray.shutdown()


def add_executor_arguments(parser: argparse.ArgumentParser, actors: str) -> None:
    """``--executor`` and ``--ray-address`` of a verb that runs a pool; ``actors`` says what the
    Ray actors are."""
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="ray",
        help=f"ray: {actors} as Ray actors (default); local: in this process",
    )
    parser.add_argument(
        "--ray-address",
        default="local",
        help="'local' starts a one-node cluster, 'auto' joins a running one, or an address",
    )


@contextmanager
def open_pool(
    executor: str,
    stage_class: type,
    args: tuple,
    resources: Resources,
    policy: Policy,
    ray_address: str | None = "local",
    what: str = "job",
) -> Iterator[Pool]:
    """A :class:`LocalPool` or a :class:`RayPool` (on a cluster attached for its lifetime)."""
    if executor == "local":
        with LocalPool(stage_class, args, policy) as pool:
            yield pool
    elif executor == "ray":
        with (
            ray_cluster(ray_address, resources, what),
            RayPool(stage_class, args, resources, policy) as pool,
        ):
            yield pool
    else:
        raise BadInputError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
