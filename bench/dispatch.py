"""Driver overhead at cluster scale: the Ray executor with many simulated GPU workers.

A real one-node Ray cluster advertises ``--workers`` fake GPUs; each worker actor pins one and
runs a model stand-in that sleeps ``--unit-seconds`` per unit (no model, no I/O), so any time
not spent sleeping is the driver's. Prints a JSON line with ``overhead_ms_per_unit`` (driver
CPU time per unit) and ``utilization`` (share of worker-time spent working, 0..1, from the first
dispatch to the last result, after every worker is up).

The default gives each worker 32 units, a short job at cluster scale (a long-horizon data set has
thousands of units per worker). On one machine the 256 actor processes share its few cores, so
the first round of dispatch reaches the last worker a second or two after the first; that ramp
(``first_start_spread_s``) and the ragged end are fixed costs, which 8 units per worker would let
dominate the figure.

    python bench/dispatch.py [--workers 256] [--units 8192] [--unit-seconds 4.0]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import ray

from pipeline.executor import Policy, RayPool, Resources
from schemas.units import SampleRef, Unit


class SleepRunner:
    """Stands in for the generator: a fixed time per unit."""

    def __init__(self, unit_seconds: float):
        self.unit_seconds = unit_seconds

    def info(self) -> dict:
        return {"pid": os.getpid(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}

    def run(self, unit: Unit) -> dict:
        started_at, t0 = time.time(), time.perf_counter()
        time.sleep(self.unit_seconds)
        return {
            "unit": unit.name,
            "frames": 0,
            "busy_s": time.perf_counter() - t0,
            "pid": os.getpid(),
            "started_at": started_at,
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=256)
    p.add_argument("--units", type=int, default=8192)
    p.add_argument("--unit-seconds", type=float, default=4.0)
    args = p.parse_args()

    task = {"task_id": "t000000000000", "seed": 0, "horizon": 8}
    units = [Unit(i, (SampleRef(task, i),)) for i in range(args.units)]
    ray.init(
        num_cpus=os.cpu_count(),
        num_gpus=args.workers,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    busy: list[tuple[float, float]] = []  # (finished at, busy seconds)
    first_start: dict[int, float] = {}  # worker pid -> wall-clock start of its first unit
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    with RayPool(
        SleepRunner, (args.unit_seconds,), Resources(args.workers, 1, 0), Policy()
    ) as pool:
        out = pool.map(units, _recorder(busy, first_start))
    end = time.perf_counter()
    wall, steady = end - t0, end - out.dispatch_started  # steady: after every worker is up
    driver_cpu = time.process_time() - cpu0
    ray.shutdown()
    ideal = args.units * args.unit_seconds / args.workers
    print(
        json.dumps(
            {
                "bench": "dispatch",
                "workers": args.workers,
                "units": args.units,
                "unit_seconds": args.unit_seconds,
                "wall_s": round(wall, 2),
                "dispatch_wall_s": round(steady, 2),
                "ideal_dispatch_wall_s": round(ideal, 2),
                "overhead_ms_per_unit": round(1000 * driver_cpu / args.units, 3),
                "utilization": round(sum(b for _, b in busy) / (args.workers * steady), 4),
                # while units were still queued (excludes the last wave's ragged end)
                "utilization_while_queued": round(
                    sum(min(b, max(0.0, out.queue_drained - (t - b))) for t, b in busy)
                    / (args.workers * (out.queue_drained - out.dispatch_started)),
                    4,
                ),
                "first_start_spread_s": round(
                    max(first_start.values()) - min(first_start.values()), 3
                ),
                "failed_units": len(out.failed),
                "machine_cpus": os.cpu_count(),
            }
        )
    )


def _recorder(busy: list[tuple[float, float]], first_start: dict[int, float]):
    def on_done(unit: Unit, marker: dict) -> None:
        busy.append((time.perf_counter(), marker["busy_s"]))
        first_start[marker["pid"]] = min(
            first_start.get(marker["pid"], marker["started_at"]), marker["started_at"]
        )

    return on_done


if __name__ == "__main__":
    main()
