"""Pipeline efficiency: the full pipeline's frames/s over a bare ``rollout()`` loop's, in one run.

Both generate the same tasks with the same model (the ``demo`` architecture by default, random
weights saved as a checkpoint: speed does not depend on the weights), batching and sampler (the
job's, with the checkpoint's strength: until 2026-11-25 the bare loop ran strength 1, 12 denoising
steps against the pipeline's 10, which flattered the pipeline). On a small shared VM the same work
can run up to ~15 % faster or slower from one process to the next, and the pipeline's generator is
another process than the bare loop's: three runs on 2026-11-25 with the checkpoint at strength 0.5
gave 0.81, 1.00 and 1.01 (the bare loop at 17.9, 15.5 and 15.4 frames/s), one at 0.8 0.96, one at
0.3 from the moved start 0.92 (its two bare runs 17.5 and 20.1 frames/s), so read one run's ratio
with that spread. The bare loop
runs before and after the pipeline (their mean is the reference, so slow drift of a shared
machine cancels) and gets its seed frames for free (loaded before timing) and does nothing with the
results; the pipeline runs on a local Ray cluster with one worker that reads seed frames, generates,
encodes mp4, writes and publishes shards and markers, then the driver builds the index.
``pipeline_over_bare`` compares throughput once the worker is up (as in a long job);
``pipeline_over_bare_with_startup`` also charges Ray's start and the worker's model load.

    python bench/generation.py [--preset demo] [--samples 16] [--horizon 32] [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from lmgendrive.checkpoint import build_untrained, load_checkpoint, save_checkpoint
from pipeline.driver import prepare, run_job
from schemas.job import parse_job
from storage.store import open_storage
from workers.generator import seed_stack, stack_driven


def job_spec(output: str, model: str, args) -> dict:
    return {
        "name": "bench",
        "model": model,
        "output": output,
        "horizons": [args.horizon],
        "manifest": {
            "build": {
                "source": "procedural",
                "towns": [5],
                "frames": 200,
                "size": 128,
                "stride": max(1, (200 - args.horizon - 8) // args.samples),
                "seed_frames": 8,
            }
        },
        "sampler": {"scheduler": "ddim", "steps": args.steps},
        "sharding": {"samples_per_shard": args.batch},
        "resources": {"workers": 1, "gpus_per_worker": 0, "cpus_per_worker": 1},
    }


def bare(job, units) -> tuple[float, int]:
    """frames/s of rollout() alone over the same units (batches), seeds and sampler, with the
    worker's thread count."""
    import torch

    torch.set_num_threads(max(1, int(job.resources.cpus_per_worker)))
    model, _ = load_checkpoint(job.model)
    size = tuple(model.config.image_size)
    step, k = model.config.frames_per_step, model.config.vision.num_waypoints
    batches = []
    for unit in units:
        stacks, speeds, driven = zip(
            *(seed_stack(s.task, size, step) for s in unit.samples), strict=True
        )
        batches.append(
            (
                np.stack(stacks),
                [s.task["instruction"] for s in unit.samples],
                unit.horizon,
                [s.seed for s in unit.samples],
                np.array(speeds, np.float32),
                stack_driven(driven, k),
            )
        )
    sampler = job.sampler.resolved()  # the worker's: the job as resolve_job() filled it in
    t0 = time.perf_counter()
    frames = 0
    for stacks, instructions, horizon, seeds, speeds, driven in batches:
        result = model.rollout(
            stacks, instructions, horizon, seeds, speed=speeds, driven=driven, sampler=sampler
        )
        frames += result.frames.shape[0] * result.frames.shape[1] * result.frames.shape[2]
    return frames / (time.perf_counter() - t0), frames


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="demo")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--horizon", type=int, default=32)
    p.add_argument("--steps", type=int, default=12)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        save_checkpoint(build_untrained(args.preset), model_dir)
        plan = prepare(parse_job(job_spec(os.path.join(tmp, "out"), model_dir, args)))
        job, units = plan.job, plan.units
        before_fps, frames = bare(job, units)
        t0 = time.perf_counter()
        summary = run_job(job, executor="ray", ray_address="local", progress_bar=False)
        with_startup_fps = summary.frames / (time.perf_counter() - t0)
        pipeline_fps = summary.frames / summary.generate_seconds
        worker = json.loads(open_storage(job.output).get_bytes("stats.json"))["timings_s"]
        after_fps, _ = bare(
            job, units
        )  # bare runs before and after: drift of a shared machine cancels
        bare_fps = (before_fps + after_fps) / 2
    print(
        json.dumps(
            {
                "bench": "generation",
                "preset": args.preset,
                "samples": len(plan.manifest),
                "horizon": args.horizon,
                "sampler_steps": args.steps,
                "frames": frames,
                "pipeline_frames": summary.frames,
                "bare_frames_per_s": round(bare_fps, 3),
                "bare_before_after": [round(before_fps, 3), round(after_fps, 3)],
                "pipeline_frames_per_s": round(pipeline_fps, 3),
                "pipeline_over_bare": round(pipeline_fps / bare_fps, 3),
                "pipeline_over_bare_with_startup": round(with_startup_fps / bare_fps, 3),
                "worker_seconds": worker,
                "machine_cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
