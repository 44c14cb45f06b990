"""The generator: loads the model once, turns work units into published shards.

``UnitRunner`` is plain Python, so the same unit code runs in-process (``--executor local``) and
inside a threaded Ray actor pinned to the GPUs Ray gives it (two units at once, their stages
overlapped). A unit's shard is built in a temporary file, published whole, and only then is its
completion marker written; the runner returns the marker (small metadata), never video bytes.
It samples exactly as the job's sampler says, every key set by the driver
(:func:`pipeline.jobcheck.resolve_job`), and records those settings with every sample.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from scenes.registry import open_scene
from schemas.errors import CheckpointError
from schemas.job import JobSpec
from schemas.scene import VIEWS
from schemas.tables import INDEX, SAMPLE
from schemas.units import Unit
from storage.shards import GeneratedSample, content_hash, sample_members, write_shard
from storage.store import open_storage

log = logging.getLogger(__name__)


def seed_stack(
    task: dict, size: tuple[int, int], step: int
) -> tuple[np.ndarray, float, np.ndarray | None]:
    """The seed frames of a task, (V, S, H, W, 3) uint8 at the model's resolution, the ego speed at
    the last seed frame and the path driven in the ``step`` frames up to it (the expert's waypoints
    ``step`` frames earlier, as the model trained on; ``None`` when the drive is younger than
    that)."""
    scene = open_scene(task["scene_source"], task["scene_ref"])
    start, n = int(task["start_frame"]), int(task["seed_frames"])
    frames = [scene.images(i) for i in range(start - n, start)]
    stack = np.stack([[_resize(f[v], size) for f in frames] for v in VIEWS])
    last = start - 1
    driven = (
        np.asarray(scene.measurements(last - step).waypoints, np.float32) if last >= step else None
    )
    return stack, float(scene.measurements(last).speed), driven


def stack_driven(driven: tuple[np.ndarray | None, ...], waypoints: int) -> np.ndarray:
    """(B, K, 2) driven paths; a sample without one gets zeros, as the model trained on drive
    starts."""
    return np.stack([np.zeros((waypoints, 2), np.float32) if d is None else d for d in driven])


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if img.shape[:2] == tuple(size):
        return img
    return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)


class UnitRunner:
    """Generates units of one job with one model instance.

    Thread-safe, and meant to run ``concurrent_units`` units at once (a threaded Ray actor): each
    stage of :meth:`run` that holds shared state takes its own lock, so one unit's seed frames load
    and another's shard encodes and publishes while a third generates; the model never runs two
    units at once. On a GPU that keeps the CPU-side work off the GPU's critical path.
    """

    concurrent_units = 2

    def __init__(self, job: dict, code_version: str, device: str | None = None):
        import torch

        t0 = time.perf_counter()
        self.job = JobSpec.model_validate(job)
        self.sampler = self.job.sampler.resolved()  # the driver's resolution, run as it is
        # CPU kernels give slightly different bits with different thread counts: pin the count to
        # the job's CPUs per worker (before any other torch work) so reruns are byte-identical
        torch.set_num_threads(max(1, int(self.job.resources.cpus_per_worker)))

        from lmgendrive.checkpoint import load_checkpoint
        from lmgendrive.device import pick_device

        self.code_version = code_version
        self.gpu_ids = _ray_gpu_ids()
        self.device = pick_device(device)
        self.model, self.identity = load_checkpoint(self.job.model, device=self.device)
        if self.job.model_sha256 not in (None, self.identity.sha256):
            raise CheckpointError(
                f"{self.job.model}: its weights {self.identity.sha256} are not those the job was "
                f"checked with ({self.job.model_sha256}); were they replaced while it ran?"
            )
        self.storage = open_storage(
            self.job.output, self.job.storage.endpoint_url, self.job.storage.region
        )
        self._seed_lock = threading.Lock()  # scenes (renderers, caches) are not thread-safe
        self._model_lock = threading.Lock()
        self.load_s = time.perf_counter() - t0
        log.info(
            "generator ready on %s (Ray GPU ids %s) in %.1f s",
            self.device,
            self.gpu_ids,
            self.load_s,
        )

    def info(self) -> dict:
        return {
            "host": platform.node(),
            "pid": os.getpid(),
            "device": str(self.device),
            "gpu_ids": self.gpu_ids,
        }

    def run(self, unit: Unit) -> dict:
        """Generate, encode and publish one unit; returns its completion marker."""
        size = tuple(self.model.config.image_size)
        step, waypoints = self.model.config.frames_per_step, self.model.config.vision.num_waypoints
        with self._seed_lock:
            t0 = time.perf_counter()
            stacks, speeds, driven = zip(
                *(seed_stack(s.task, size, step) for s in unit.samples), strict=True
            )
            t_seed = time.perf_counter()
        with self._model_lock:
            t_model = time.perf_counter()
            result = self.model.rollout(
                np.stack(stacks),
                [s.task["instruction"] for s in unit.samples],
                unit.horizon,
                [s.seed for s in unit.samples],
                speed=np.array(speeds, np.float32),
                driven=stack_driven(driven, waypoints),
                sampler=self.sampler,
            )
            t1 = time.perf_counter()
        encoded = []
        rows = []
        for b, ref in enumerate(unit.samples):
            sample = GeneratedSample(
                key=ref.key,
                frames=result.frames[b],
                seed_frames=stacks[b],
                waypoints=result.waypoints[b],
                controls=result.controls[b],
                completion=result.completion[b],
                meta=self._meta(ref, result.frames[b]),
            )
            members = sample_members(
                sample, VIEWS, self.job.encoding.format, self.job.encoding.crf, 10.0
            )
            encoded.append((ref.key, members))
            rows.append(_index_row(ref, unit, content_hash(members)))
        t2 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="lmgd-") as tmp:
            path = Path(tmp) / f"{unit.name}.tar"
            sha = write_shard(path, encoded)
            size_bytes = path.stat().st_size
            self.storage.put_file(unit.shard_key, path)
        t3 = time.perf_counter()
        marker = {
            "schema_version": 1,
            "unit": unit.name,
            "fingerprint": unit.fingerprint,
            "shard": unit.shard_key,
            "sha256": sha,
            "bytes": size_bytes,
            "samples": rows,
            "frames": unit.frames * len(VIEWS),
            "timings": {
                "seed_s": t_seed - t0,
                "generate_s": t1 - t_model,
                "encode_s": t2 - t1,
                "publish_s": t3 - t2,
            },
            "worker": self.info(),
        }
        self.storage.put_bytes(
            unit.marker_key, json.dumps(marker, sort_keys=True, indent=1).encode()
        )
        return marker

    def _meta(self, ref, frames: np.ndarray) -> dict:
        t = ref.task
        return {
            "schema_version": SAMPLE.version,
            "key": ref.key,
            "task_id": t["task_id"],
            "sample_index": ref.index,
            "instruction": t["instruction"],
            "category": t["category"],
            "misleading": t["misleading"],
            "counterfactual": t["counterfactual"],
            "scene": t["scene"],
            "start_frame": t["start_frame"],
            "horizon": t["horizon"],
            "fps": 10.0,
            "views": list(VIEWS),
            "height": int(frames.shape[2]),
            "width": int(frames.shape[3]),
            "model_id": self.identity.model_id,
            "model_sha256": self.identity.sha256,
            "sampler": json.dumps(self.sampler.model_dump(), sort_keys=True),
            "seed": ref.seed,
            "code_version": self.code_version,
        }


def _index_row(ref, unit: Unit, digest: str) -> dict:
    t = ref.task
    return {
        "schema_version": INDEX.version,
        "key": ref.key,
        "shard": unit.shard_key,
        "task_id": t["task_id"],
        "sample_index": ref.index,
        "horizon": t["horizon"],
        "category": t["category"],
        "instruction": t["instruction"],
        "misleading": t["misleading"],
        "counterfactual": t["counterfactual"],
        "scene": t["scene"],
        "start_frame": t["start_frame"],
        "weather": t["weather"],
        "seed": ref.seed,
        "content_sha256": digest,
    }


def _ray_gpu_ids() -> list:
    import ray

    return [str(g) for g in ray.get_gpu_ids()] if ray.is_initialized() else []
