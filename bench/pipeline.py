"""Pipeline efficiency: the full pipeline's frames/s over a bare ``rollout()`` loop's, in one run.

Both generate the same tasks with the same model and batching. The bare loop gets its seed frames
for free (loaded before timing) and does nothing with the results; the pipeline starts a local Ray
cluster with one worker, loads the model there, reads seed frames, encodes mp4, writes and
publishes shards and markers, and builds the index. Prints a JSON line with ``pipeline_over_bare``.

    python bench/pipeline.py [--model tiny] [--samples 8] [--horizon 16] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from lmgendrive.checkpoint import load_checkpoint
from lmgendrive.config import SamplerConfig
from pipeline.driver import prepare, run_job
from pipeline.storage import open_storage
from pipeline.units import make_units
from schemas.job import parse_job
from workers.generator import seed_stack


def job_spec(output: str, args) -> dict:
    return {
        "name": "bench", "model": args.model, "output": output, "horizons": [args.horizon],
        "manifest": {"build": {"source": "procedural", "towns": [5], "frames": 200, "size": 128,
                               "stride": max(1, (200 - args.horizon - 8) // args.samples), "seed_frames": 8}},
        "sampler": {"scheduler": "ddim", "steps": args.steps},
        "sharding": {"samples_per_shard": args.batch},
        "resources": {"workers": 1, "gpus_per_worker": 0, "cpus_per_worker": 1},
    }


def bare(job, units) -> tuple[float, int]:
    """frames/s of rollout() alone over the same units (batches) and seeds."""
    model = load_checkpoint(job.model)
    size = tuple(model.config.image_size)
    batches = []
    for unit in units:
        stacks, speeds = zip(*(seed_stack(s.task, size) for s in unit.samples), strict=True)
        batches.append((np.stack(stacks), [s.task["instruction"] for s in unit.samples], unit.horizon,
                        [s.seed for s in unit.samples], np.array(speeds, np.float32)))
    sampler = SamplerConfig(name=job.sampler.scheduler, steps=job.sampler.steps)
    t0 = time.perf_counter()
    frames = 0
    for stacks, instructions, horizon, seeds, speeds in batches:
        result = model.rollout(stacks, instructions, horizon, seeds, speed=speeds, sampler=sampler)
        frames += result.frames.shape[0] * result.frames.shape[1] * result.frames.shape[2]
    return frames / (time.perf_counter() - t0), frames


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--horizon", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        job = parse_job(job_spec(os.path.join(tmp, "out"), args))
        manifest = prepare(job, open_storage(job.output), overwrite=True)
        units = make_units(manifest, job.sharding.samples_per_shard)
        bare_fps, frames = bare(job, units)
        t0 = time.perf_counter()
        summary = run_job(job, executor="ray", ray_address="local", progress_bar=False)
        pipeline_fps = summary.frames / (time.perf_counter() - t0)
    print(json.dumps({
        "bench": "pipeline", "model": args.model, "samples": len(manifest), "horizon": args.horizon,
        "sampler_steps": args.steps, "frames": frames, "pipeline_frames": summary.frames,
        "bare_frames_per_s": round(bare_fps, 3), "pipeline_frames_per_s": round(pipeline_fps, 3),
        "pipeline_over_bare": round(pipeline_fps / bare_fps, 3), "machine_cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
