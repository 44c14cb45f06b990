"""Driver overhead at cluster scale: the Ray executor with many simulated GPU workers.

A real one-node Ray cluster advertises ``--workers`` fake GPUs; each worker actor pins one and
runs a model stand-in that sleeps ``--unit-seconds`` per unit (no model, no I/O), so any time
not spent sleeping is the driver's. Prints a JSON line with ``overhead_ms_per_unit`` (driver
CPU time per unit) and ``utilization`` (share of worker-time spent working, 0..1).

    python bench/dispatch.py [--workers 256] [--units 2048] [--unit-seconds 4.0]
"""

from __future__ import annotations

import _syspath  # noqa: F401  (must come first: keeps bench/pipeline.py from shadowing `pipeline`)

# isort: split
import argparse
import json
import os
import time

import ray

from pipeline.executors import run_ray
from pipeline.units import SampleRef, Unit


class SleepRunner:
    """Stands in for the generator: a fixed time per unit."""

    def __init__(self, unit_seconds: float):
        self.unit_seconds = unit_seconds

    def info(self) -> dict:
        return {"pid": os.getpid(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}

    def run(self, unit: Unit) -> dict:
        t0 = time.perf_counter()
        time.sleep(self.unit_seconds)
        return {"unit": unit.name, "frames": 0, "busy_s": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=256)
    p.add_argument("--units", type=int, default=2048)
    p.add_argument("--unit-seconds", type=float, default=4.0)
    args = p.parse_args()

    task = {"task_id": "t000000000000", "seed": 0, "horizon": 8}
    units = [Unit(i, (SampleRef(task, i),)) for i in range(args.units)]
    ray.init(num_cpus=os.cpu_count(), num_gpus=args.workers, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    busy: list[tuple[float, float]] = []  # (finished at, busy seconds)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    out = run_ray(units, SleepRunner, (args.unit_seconds,), args.workers, 1, 0, 0,
                  lambda unit, marker: busy.append((time.perf_counter(), marker["busy_s"])))
    end = time.perf_counter()
    wall, steady = end - t0, end - out.dispatch_started  # steady: after every worker is up
    driver_cpu = time.process_time() - cpu0
    ray.shutdown()
    ideal = args.units * args.unit_seconds / args.workers
    print(json.dumps({
        "bench": "dispatch", "workers": args.workers, "units": args.units, "unit_seconds": args.unit_seconds,
        "wall_s": round(wall, 2), "dispatch_wall_s": round(steady, 2), "ideal_dispatch_wall_s": round(ideal, 2),
        "overhead_ms_per_unit": round(1000 * driver_cpu / args.units, 3),
        "utilization": round(sum(b for _, b in busy) / (args.workers * steady), 4),
        # while units were still queued (excludes the last wave's ragged end)
        "utilization_while_queued": round(
            sum(min(b, max(0.0, out.queue_drained - (t - b))) for t, b in busy)
            / (args.workers * (out.queue_drained - out.dispatch_started)), 4),
        "failed_units": len(out.failed), "machine_cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
