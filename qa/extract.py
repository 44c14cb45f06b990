"""Feature extraction for QA: one shard's generated samples and their recorded futures ->
statistics.

:class:`FeatureRunner` is plain Python, so the same code runs in-process and inside a Ray actor
(:mod:`workers.qa`). It loads the extractors once, accumulates :class:`Accumulator` cells across
the work items it is given and hands them over with :meth:`FeatureRunner.take`. Per sample it also
returns a small record of the trajectory and motion figures (no features, no frames). A shard that
cannot be read whole, or whose samples differ from the index, adds nothing: its result names it.

Cells, per metric and horizon (``group`` -1 = not split):
``(view, "all", -1)`` per camera, ``("pooled", category, -1)`` per instruction category and
``("pooled", "all", g)`` per task group g; the pooled figure over everything is the sum of the
groups. Sides: ``real``, ``generated`` and the "do nothing" baselines of each sample
(:data:`BASELINES`, group cells only): its last seed frame held (``repeat_last``) and moved by
its own plan without generation (``warp_only``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from qa.config import QAConfig
from qa.frechet import FeatureStats
from qa.motion import step_yaw, trajectory, turn_of, video_yaw
from qa.video import CLIP_FRAMES, clip_starts, clips_of
from scenes.registry import open_scene
from schemas.errors import BadInputError
from storage.media import decode_mp4, encode_mp4
from storage.read import DamagedOutput, Sample, decode_sample, verified_raw
from storage.store import open_storage

log = logging.getLogger(__name__)

CellKey = tuple[str, int, str, str, int, str]  # metric, horizon, view, category, group, side
BASELINES = ("repeat_last", "warp_only")


@dataclass(frozen=True)
class SampleTask:
    """What QA needs to know about one generated sample and its task."""

    key: str
    task_id: str
    scene_source: str
    scene_ref: str
    start_frame: int
    horizon: int
    category: str
    maneuver: str | None  # left / right / straight when the instruction asks for one
    misleading: bool
    group: int
    content_sha256: str  # as the index records it


@dataclass(frozen=True)
class WorkItem:
    shard: str
    horizon: int
    samples: dict[str, SampleTask]

    @property
    def name(self) -> str:
        return self.shard


@dataclass(frozen=True)
class ShardResult:
    """One work item's per-sample records, or why its shard was left out (``excluded``)."""

    shard: str
    records: list[dict]
    excluded: str | None = None


@dataclass
class Recorded:
    """The recorded future of a task at the generated resolution."""

    frames: np.ndarray  # (V, T, H, W, 3), through the shards' codec
    before: np.ndarray  # (V, H, W, 3): frame start_frame - 1, the last seed frame
    waypoints: np.ndarray  # (steps, K, 2): recorded waypoints at each step's first frame


class Accumulator:
    """Feature statistics per cell; merges with another accumulator."""

    def __init__(self) -> None:
        self.cells: dict[CellKey, FeatureStats] = {}

    def add(self, key: CellKey, features: np.ndarray) -> None:
        if key not in self.cells:
            self.cells[key] = FeatureStats.empty(features.shape[1])
        self.cells[key].add(features)

    def merge(self, other: Accumulator) -> None:
        for key, stats in other.cells.items():
            self.cells[key] = self.cells[key].merge(stats) if key in self.cells else stats


def resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """To (H, W): INTER_AREA when shrinking (as the seed frames are made), INTER_LINEAR when
    enlarging."""
    if img.shape[:2] == size:
        return img
    shrink = img.shape[0] >= size[0] and img.shape[1] >= size[1]
    return cv2.resize(
        img, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )


def frames_per_step(sample: Sample) -> int:
    """Frames the model generated per step for ``sample``: its horizon over its waypoint rows
    (``waypoints.npy`` holds one row per step)."""
    horizon, steps = int(sample.meta["horizon"]), len(sample.waypoints)
    if steps == 0 or horizon % steps:
        raise BadInputError(
            f"{sample.key}: {steps} waypoint rows do not split horizon {horizon} into whole steps"
        )
    return horizon // steps


def warp_only_frames(sample: Sample, device: torch.device) -> np.ndarray:
    """The warp-only baseline of ``sample`` (V, T, H, W, 3): its last seed frame moved by its own
    plan (:func:`lmgendrive.ego_warp.warp_only`) at its stored resolution, nothing generated."""
    from lmgendrive.ego_warp import warp_only
    from lmgendrive.frames import to_pixels, to_uint8

    last = sample.seed_frames[:, -1]
    pixels = to_pixels(last, last.shape[1:3], device, f"{sample.key} seed frames")
    plan = torch.as_tensor(sample.waypoints, dtype=torch.float32, device=device)
    moved = warp_only(
        pixels[None],
        plan[None],
        frames_per_step(sample),
        float(sample.meta["fps"]),
        list(sample.meta["views"]),
    )
    return to_uint8(moved[0])


def recorded_future(
    task: SampleTask,
    views: list[str],
    size: tuple[int, int],
    encoding: str,
    crf: int,
    fps: float,
    step: int,
) -> Recorded:
    """Frames ``[start_frame, start_frame + horizon)`` of the task's scene, resized to ``size``, and
    (for mp4 outputs) encoded and decoded with the shards' settings so codec loss cancels out; the
    recorded waypoints at the first frame of every ``step`` frames."""
    scene = open_scene(task.scene_source, task.scene_ref)
    start, h = task.start_frame, task.horizon
    images = [scene.images(i) for i in range(start - 1, start + h)]
    stack = np.stack([[resize(img[v], size) for img in images] for v in views])
    future = stack[:, 1:]
    if encoding == "mp4":
        future = np.stack([decode_mp4(encode_mp4(f, fps=fps, crf=crf)) for f in future])
    waypoints = np.stack(
        [scene.measurements(start - 1 + k * step).waypoints for k in range(h // step)]
    )
    return Recorded(frames=future, before=stack[:, 0], waypoints=waypoints)


def load_extractors(config: QAConfig, device) -> dict:
    """metric -> extractor, for the requested FD metrics that can run."""
    extractors = {}
    if config.wants("fid"):
        from qa.inception import load_inception

        extractors["fid"] = load_inception(config.weights_dir, device, config.dims)
    if config.wants("fvd"):
        from qa.video import load_i3d

        extractors["fvd"] = load_i3d(config.weights_dir, device)
    if config.wants("fd_drive") and config.evaluator is not None:
        from qa.drive import load_drive

        extractors["fd_drive"] = load_drive(Path(config.evaluator), device)
    return extractors


class FeatureRunner:
    """Extracts and accumulates the features of the work items it runs."""

    def __init__(self, config: QAConfig):
        from lmgendrive.device import pick_device

        self.config = config
        self.device = pick_device(config.device)
        self.extractors = load_extractors(config, self.device)
        self.storage = open_storage(config.output, config.endpoint_url, config.region)
        self.acc = Accumulator()

    def descriptions(self) -> dict[str, str]:
        return {m: e.description for m, e in self.extractors.items()}

    def run(self, item: WorkItem) -> ShardResult:
        """Accumulate one shard's samples, one record per sample; a damaged shard adds nothing."""
        try:
            records, cells = self._measure(item)
        except DamagedOutput as e:
            log.warning("%s: left out of QA", e)
            return ShardResult(item.shard, [], str(e))
        for key, features in cells:
            self.acc.add(key, features)
        return ShardResult(item.shard, records)

    def _measure(self, item: WorkItem) -> tuple[list[dict], list[tuple[CellKey, np.ndarray]]]:
        """The records and feature cells of one shard, accumulated only once it was read whole."""
        records, cells = [], []
        cache: dict[str, tuple[Recorded, dict[str, np.ndarray]]] = {}
        stills: dict[bytes, dict[str, np.ndarray]] = {}  # last seed frames -> their features
        listed = {key: task.content_sha256 for key, task in item.samples.items()}
        for raw in verified_raw(self.storage, item.shard, listed):
            task = item.samples.get(raw["__key__"])
            if task is None:
                continue
            sample = decode_sample(raw)
            views, step = list(sample.meta["views"]), frames_per_step(sample)
            if task.task_id not in cache:
                real = recorded_future(
                    task,
                    views,
                    tuple(sample.frames.shape[2:4]),
                    self.config.encoding,
                    self.config.crf,
                    float(sample.meta["fps"]),
                    step,
                )
                cache[task.task_id] = real, self._extract(real.frames, views)
            real, real_features = cache[task.task_id]
            if real.frames.shape != sample.frames.shape:
                raise BadInputError(
                    f"{sample.key}: generated frames {sample.frames.shape} do not match the "
                    f"recorded future {real.frames.shape} of its task"
                )
            cells += self._cells(task, views, real_features, "real")
            cells += self._cells(task, views, self._extract(sample.frames, views), "generated")
            if self.config.baselines and self.extractors:
                last = sample.seed_frames[:, -1]
                seen = last.tobytes()
                if seen not in stills:
                    stills[seen] = self._extract_still(last, views)
                baselines = {
                    "repeat_last": _held(stills[seen], task.horizon),
                    "warp_only": self._extract(warp_only_frames(sample, self.device), views),
                }
                for side, features in baselines.items():  # group cells only
                    cells += [c for c in self._cells(task, views, features, side) if c[0][4] >= 0]
            records.append(self._record(task, views, sample, real, step))
        log.debug("%s: %d samples, %d recorded futures", item.shard, len(records), len(cache))
        return records, cells

    def take(self) -> Accumulator:
        """The statistics gathered since the last call."""
        acc, self.acc = self.acc, Accumulator()
        return acc

    def _extract(
        self, frames: np.ndarray, views: list[str], video: bool = True
    ) -> dict[str, np.ndarray]:
        """Features of (V, T, H, W, 3) frames: per view (V, n, D) for FID / FVD, (T, D) for
        FD-drive; FVD only with ``video``."""
        v, t = frames.shape[:2]
        out = {}
        if "fid" in self.extractors:
            out["fid"] = self.extractors["fid"](frames.reshape(v * t, *frames.shape[2:])).reshape(
                v, t, -1
            )
        if "fvd" in self.extractors and video:
            clips = np.stack([clips_of(frames[i]) for i in range(v)])
            out["fvd"] = self.extractors["fvd"](clips.reshape(-1, *clips.shape[2:])).reshape(
                v, clips.shape[1], -1
            )
        if "fd_drive" in self.extractors:
            wanted = self.extractors["fd_drive"].views
            if sorted(wanted) != sorted(views):
                raise BadInputError(
                    f"the FD-drive evaluator sees views {list(wanted)}, the samples have {views}"
                )
            order = [views.index(v) for v in wanted]
            out["fd_drive"] = self.extractors["fd_drive"](frames[order].swapaxes(0, 1))
        return out

    def _extract_still(self, last: np.ndarray, views: list[str]) -> dict[str, np.ndarray]:
        """Features of the last seed frames ``last`` (V, H, W, 3) held still: one frame per view
        (FID), one multi-view frame (FD-drive), one still 16-frame clip per view (FVD)."""
        out = self._extract(last[:, None], views, video=False)
        if "fvd" in self.extractors:
            still = np.repeat(last[:, None], CLIP_FRAMES, axis=1)
            out["fvd"] = self.extractors["fvd"](still)[:, None]
        return out

    def _cells(
        self, task: SampleTask, views: list[str], features: dict[str, np.ndarray], side: str
    ) -> list[tuple[CellKey, np.ndarray]]:
        """The cells ``features`` of one sample go to, in accumulation order."""
        cells = []
        for metric, feats in features.items():
            if feats.ndim == 3:
                for i, view in enumerate(views):
                    cells.append(((metric, task.horizon, view, "all", -1, side), feats[i]))
                feats = feats.reshape(-1, feats.shape[-1])
            cells.append(((metric, task.horizon, "pooled", task.category, -1, side), feats))
            cells.append(((metric, task.horizon, "pooled", "all", task.group, side), feats))
        return cells

    def _record(
        self, task: SampleTask, views: list[str], sample: Sample, real: Recorded, step: int
    ) -> dict:
        traj = trajectory(sample.waypoints)
        record = {
            "key": task.key,
            "task_id": task.task_id,
            "horizon": task.horizon,
            "category": task.category,
            "maneuver": task.maneuver,
            "misleading": task.misleading,
            "heading_deg": traj.heading_deg,
            "lateral_m": traj.lateral_m,
            "predicted": traj.maneuver(),
        }
        if "front" in views:
            f = views.index("front")
            gen = np.concatenate([sample.seed_frames[f, -1:], sample.frames[f]])
            rec = np.concatenate([real.before[f][None], real.frames[f]])
            yaw = video_yaw(gen, step)
            heading = float(np.degrees(yaw.sum()))
            record.update(
                video_heading_deg=heading,
                video_predicted=turn_of(heading),
                action_yaw=step_yaw(sample.waypoints).tolist(),
                video_yaw=yaw.tolist(),
                recorded_action_yaw=step_yaw(real.waypoints).tolist(),
                recorded_video_yaw=video_yaw(rec, step).tolist(),
            )
        return record


def _held(features: dict[str, np.ndarray], horizon: int) -> dict[str, np.ndarray]:
    """Still-frame features (:meth:`FeatureRunner._extract_still`) as a ``horizon``-frame video's:
    each frame's (FID, FD-drive) or each clip's (FVD) the same."""
    n = {"fvd": len(clip_starts(horizon))}
    return {m: np.repeat(f, n.get(m, horizon), axis=-2) for m, f in features.items()}
