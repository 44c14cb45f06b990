"""QA's planning and figures: work items from a job output, then, from the merged statistics of each
horizon, the figures, written as ``report.md``, ``horizon.png``, ``qa.json`` and ``stats/*.npz``.

The features are extracted by :mod:`workers.qa` stages, run by the pipeline's executor
(:mod:`pipeline.qa_run`); horizons arrive one after the other, so one horizon's statistics are held
at a time.
"""

from __future__ import annotations

import io
import json
import logging
import zlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qa.config import FD_METRICS, QAConfig
from qa.extract import BASELINES, Accumulator, SampleTask, WorkItem
from qa.frechet import FeatureStats, frechet_distance, merge_all
from qa.motion import TURN_DEG
from qa.report import write_outputs
from qa.result import ADHERENCE_VIEWS, QAResult
from qa.uncertainty import bootstrap_ci, correlation_ci, fd_infinity, wilson
from qa.weights import I3D_STATE_DICT, I3D_TORCHSCRIPT, INCEPTION, find_weights
from schemas.errors import BadInputError, CheckpointError, RunFailure
from schemas.scene import turn_asked
from schemas.spec import validate
from schemas.tables import QA, TASK
from storage.read import read_index
from storage.store import Storage, open_storage

log = logging.getLogger(__name__)

GROUPS = 10  # task groups per horizon: the bootstrap's resampling unit
TURNING_STEP_DEG = (
    5.0  # a step turning at least this much (predicted) counts for action-video agreement
)
MIN_TURNING_STEPS = 3
# instruction adherence read from the plan or from the video: record field, details key, rule
ADHERENCE = {
    "plan": (
        "predicted",
        "adherence",
        f"predicted waypoints: |heading change| >= {TURN_DEG:g} deg is a turn "
        "(same side laterally)",
    ),
    "video": (
        "video_predicted",
        "adherence_video",
        f"front-camera phase-correlation yaw summed over the horizon: |heading change| >= "
        f"{TURN_DEG:g} deg is a turn",
    ),
}


def read_tasks(storage: Storage) -> dict[str, dict]:
    """The job's tasks by id, from ``manifest.parquet``."""
    if not storage.exists("manifest.parquet"):
        raise BadInputError(f"{storage.url('manifest.parquet')}: not found (is this a job output?)")
    table = validate(
        pq.read_table(pa.BufferReader(storage.get_bytes("manifest.parquet"))),
        TASK,
        storage.url("manifest.parquet"),
    )
    return {r["task_id"]: r for r in table.to_pylist()}


def plan(storage: Storage) -> dict[int, list[WorkItem]]:
    """Work items (one per shard) per horizon; tasks are split into groups by task-id rank."""
    index = read_index(storage).to_pylist()
    if not index:
        raise BadInputError(f"{storage.url('index.parquet')}: no samples to evaluate")
    tasks = read_tasks(storage)
    missing = sorted({r["task_id"] for r in index} - set(tasks))
    if missing:
        raise BadInputError(
            f"{storage.url('index.parquet')}: task(s) {missing[:5]} are not in manifest.parquet"
        )
    items: dict[int, dict[str, WorkItem]] = defaultdict(dict)
    for h in sorted({r["horizon"] for r in index}):
        rows = [r for r in index if r["horizon"] == h]
        ids = sorted({r["task_id"] for r in rows})
        groups = min(GROUPS, len(ids))
        group_of = {t: i % groups for i, t in enumerate(ids)}
        for r in rows:
            t = tasks[r["task_id"]]
            kind = json.loads(t["instruction_args"] or "{}").get("type", "")
            sample = SampleTask(
                key=r["key"],
                task_id=t["task_id"],
                scene_source=t["scene_source"],
                scene_ref=t["scene_ref"],
                start_frame=t["start_frame"],
                horizon=h,
                category=t["category"],
                maneuver=turn_asked(kind),
                misleading=t["misleading"],
                group=group_of[t["task_id"]],
                content_sha256=r["content_sha256"],
            )
            item = items[h].setdefault(r["shard"], WorkItem(r["shard"], h, {}))
            item.samples[r["key"]] = sample
    return {h: list(by_shard.values()) for h, by_shard in items.items()}


REFERENCE_WEIGHTS = {"fid": (INCEPTION,), "fvd": (I3D_TORCHSCRIPT, I3D_STATE_DICT)}


def preflight(config: QAConfig) -> None:
    """Fail before any work when a required weights file is missing."""
    for metric, files in REFERENCE_WEIGHTS.items():
        if config.wants(metric):
            find_weights(files, config.weights_dir)


def without_missing_weights(config: QAConfig) -> QAConfig:
    """``config`` minus FID / FVD when their reference weights are not on disk, each noted as
    skipped with the reason (``lmgd demo`` runs on a fresh machine; ``lmgd qa`` fails instead)."""
    dropped = []
    for metric, files in REFERENCE_WEIGHTS.items():
        if config.wants(metric):
            try:
                find_weights(files, config.weights_dir)
            except CheckpointError as exc:
                dropped.append((metric, f"{metric.upper()} skipped: {exc}"))
    names = {m for m, _ in dropped}
    return replace(
        config,
        metrics=tuple(m for m in config.metrics if m not in names),
        unavailable=config.unavailable + tuple(dropped),
    )


def evaluate(
    config: QAConfig,
    storage: Storage,
    stream: Iterable[tuple[int, Accumulator, list[dict], dict[str, str]]],
    extractors: dict[str, str],
) -> QAResult:
    """The QA rows from the per-horizon statistics, records and left-out shards (shard -> why) in
    ``stream``; writes ``report.md``, ``horizon.png``, ``qa.json``, ``stats/*.npz`` and the gallery
    to ``config.report``, noting each left-out shard."""
    from lmgendrive.device import pick_device

    out = open_storage(config.report, config.endpoint_url, config.region)
    result = QAResult([], extractors, config.skipped())
    figures = Figures(config, pick_device(config.device), extractors)
    measured = 0
    for h, acc, records, excluded in stream:
        result.rows += figures.fd_rows(h, acc, out, result)
        result.rows += figures.trajectory_rows(h, records, result)
        result.excluded.update(excluded)
        measured += len(records)
    if result.excluded and not measured:
        raise RunFailure(
            "no sample left to measure, every shard is damaged:\n  "
            + "\n  ".join(result.excluded.values())
        )
    if result.excluded:
        result.details.setdefault("notes", []).extend(result.excluded.values())
    rows = validate(pa.Table.from_pylist(result.rows, schema=QA.arrow), QA, "qa rows").to_pylist()
    result.rows = rows
    if config.gallery:
        from qa.gallery import write_gallery

        result.gallery = write_gallery(storage, out, config.gallery, set(result.excluded))
        result.files += result.gallery
    write_outputs(config, result, out)
    return result


class Figures:
    """The QA rows of one horizon from its merged statistics and sample records."""

    def __init__(self, config: QAConfig, device, extractors: dict[str, str]):
        self.config = config
        self.distance = partial(frechet_distance, device=device)
        self.extractors = extractors

    def _rng(self, figure: str, h: int) -> np.random.Generator:
        """Resampling stream of one figure at one horizon (reproducible, independent of run
        order)."""
        return np.random.default_rng([self.config.seed, h, zlib.crc32(figure.encode())])

    def fd_rows(self, h: int, acc: Accumulator, out: Storage, result: QAResult) -> list[dict]:
        """The Fréchet rows of horizon ``h``; the baselines' pooled figures go to
        ``result.baselines``."""
        rows = []
        for metric in FD_METRICS:
            groups = sorted({k[4] for k in acc.cells if k[:4] == (metric, h, "pooled", "all")})
            if not groups:
                continue
            sides = {
                side: [acc.cells[(metric, h, "pooled", "all", g, side)] for g in groups]
                for side in ("real", "generated", *BASELINES)
                if (metric, h, "pooled", "all", groups[0], side) in acc.cells
            }
            row = self._pooled_row(metric, h, sides["real"], sides["generated"])
            rows.append(row)
            result.baselines += [
                {**self._pooled_row(metric, h, sides["real"], sides[b], b), "baseline": b}
                for b in BASELINES
                if b in sides
            ]
            for (m, hh, view, cat, g, side), stats in sorted(acc.cells.items()):
                if (
                    m == metric
                    and hh == h
                    and g == -1
                    and side == "real"
                    and not (view == "pooled" and cat == "all")
                ):
                    rows.append(
                        self._fd_row(
                            metric,
                            h,
                            view,
                            cat,
                            stats,
                            acc.cells[(m, h, view, cat, g, "generated")],
                        )
                    )
            if metric == "fid" and len(groups) >= 3:
                value, points = fd_infinity(
                    sides["real"], sides["generated"], self._rng("fid_inf", h), self.distance
                )
                rows.append(
                    _row(
                        "fid_inf",
                        h,
                        "pooled",
                        "all",
                        value,
                        (None, None),
                        row["n_real"],
                        row["n_generated"],
                        self.extractors[metric],
                    )
                )
                result.details.setdefault("fid_inf_points", {})[h] = points
            for side, stats in sides.items():
                name = f"stats/{metric}-h{h:03d}-{side}.npz"
                buf = io.BytesIO()
                merge_all(stats).save(buf)
                out.put_bytes(name, buf.getvalue())
                result.files.append(name)
            result.details.setdefault("groups", {})[h] = len(groups)
        return rows

    def _pooled_row(
        self,
        metric: str,
        h: int,
        real_g: list[FeatureStats],
        other_g: list[FeatureStats],
        side: str = "generated",
    ) -> dict:
        """The pooled, all-category row of one side against the real groups, with its bootstrap
        interval (every side draws the same resamples of the groups)."""
        row = self._fd_row(metric, h, "pooled", "all", merge_all(real_g), merge_all(other_g))
        if self.config.bootstrap and len(real_g) >= 2:
            log.info(
                "%s (%s) at horizon %d: bootstrap over %d task groups, %d replicates",
                metric,
                side,
                h,
                len(real_g),
                self.config.bootstrap,
            )
            row["ci_low"], row["ci_high"] = bootstrap_ci(
                real_g,
                other_g,
                row["value"],
                self.config.bootstrap,
                self._rng(metric, h),
                self.distance,
            )
        return row

    def _fd_row(
        self, metric: str, h: int, view: str, category: str, real: FeatureStats, gen: FeatureStats
    ) -> dict:
        if real.count != gen.count:
            raise RunFailure(
                f"{metric} at horizon {h} ({view}, {category}): {real.count} real vs {gen.count} "
                f"generated items; the protocol compares equal numbers"
            )
        return _row(
            metric,
            h,
            view,
            category,
            self.distance(real, gen),
            (None, None),
            real.count,
            gen.count,
            self.extractors[metric],
        )

    def trajectory_rows(self, h: int, records: list[dict], result: QAResult) -> list[dict]:
        rows = []
        if self.config.wants("instruction_adherence"):
            rows += self._adherence(h, records, result)
        if self.config.wants("action_video_agreement"):
            rows += self._agreement(h, records, result)
        return rows

    def _adherence(self, h: int, records: list[dict], result: QAResult) -> list[dict]:
        """Instruction adherence read from the plan (view ``pooled``) and from the front video
        (view ``front``), each with its confusion table in ``result.details``."""
        rows = []
        for source, (field, details, rule) in ADHERENCE.items():
            confusion: dict[str, dict[str, dict[str, int]]] = {"feasible": {}, "misleading": {}}
            for r in records:
                if r["maneuver"] is not None and field in r:
                    kind = confusion["misleading" if r["misleading"] else "feasible"]
                    cell = kind.setdefault(r["maneuver"], {})
                    cell[r[field]] = cell.get(r[field], 0) + 1
            result.details.setdefault(details, {})[h] = confusion
            n = sum(sum(c.values()) for c in confusion["feasible"].values())
            if n == 0:  # none for the plan: none for the video; none for the video: no front view
                result.details.setdefault("notes", []).append(
                    f"horizon {h}: no feasible turn instruction, no instruction adherence"
                    if source == "plan"
                    else f"horizon {h}: no front view, no instruction adherence (video)"
                )
                break
            k = sum(c.get(m, 0) for m, c in confusion["feasible"].items())
            view, label = ADHERENCE_VIEWS[source], f"instruction adherence ({source}): {rule}"
            rows.append(
                _row("instruction_adherence", h, view, "turn", k / n, wilson(k, n), 0, n, label)
            )
        return rows

    def _agreement(self, h: int, records: list[dict], result: QAResult) -> list[dict]:
        gen = [np.c_[r["action_yaw"], r["video_yaw"]] for r in records if "action_yaw" in r]
        rec = {
            r["task_id"]: np.c_[r["recorded_action_yaw"], r["recorded_video_yaw"]]
            for r in records
            if "action_yaw" in r
        }
        if not gen:
            return []
        xy, ref = np.concatenate(gen), np.concatenate(list(rec.values()))
        figures = {"generated_r": _yaw_correlation(xy), "recorded_r": _yaw_correlation(ref)}
        result.details.setdefault("agreement", {})[h] = {
            **figures,
            "steps": len(xy),
            "recorded_steps": len(ref),
        }
        if figures["generated_r"] is None:
            result.details.setdefault("notes", []).append(
                f"horizon {h}: fewer than {MIN_TURNING_STEPS} steps whose predicted yaw reaches "
                f"{TURNING_STEP_DEG:g} deg (or a still video); action-video agreement needs turning"
            )
            return []
        ci = (
            correlation_ci(gen, self.config.bootstrap, self._rng("agreement", h), _yaw_correlation)
            if self.config.bootstrap
            else (None, None)
        )
        rule = (
            "Pearson r, per-step yaw of predicted waypoints vs front-camera phase-correlation yaw"
        )
        return [
            _row(
                "action_video_agreement",
                h,
                "front",
                "all",
                figures["generated_r"],
                ci,
                len(ref),
                len(xy),
                rule,
            )
        ]


def _yaw_correlation(xy: np.ndarray) -> float | None:
    """Pearson r of (action yaw, video yaw) rows; None without enough turning to correlate."""
    if (np.abs(np.degrees(xy[:, 0])) >= TURNING_STEP_DEG).sum() < MIN_TURNING_STEPS or xy[
        :, 1
    ].std() == 0:
        return None
    return float(np.corrcoef(xy[:, 0], xy[:, 1])[0, 1])


def _row(
    metric: str,
    h: int,
    view: str,
    category: str,
    value: float,
    ci: tuple,
    n_real: int,
    n_gen: int,
    extractor: str,
) -> dict:
    return {
        "schema_version": QA.version,
        "metric": metric,
        "horizon": h,
        "view": view,
        "category": category,
        "value": float(value),
        "ci_low": ci[0],
        "ci_high": ci[1],
        "n_real": int(n_real),
        "n_generated": int(n_gen),
        "extractor": extractor,
    }
