"""The settings of one QA run, from a job spec or the command line."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from schemas.job import JobSpec, QASpec

INCEPTION_DIMS = (64, 192, 768, 2048)  # pytorch-fid's block outputs: pool1, pool2, pre-aux, pool3
PROTOCOL_DIMS = 2048
FD_METRICS = ("fid", "fvd", "fd_drive")
TRAJECTORY_METRICS = ("instruction_adherence", "action_video_agreement")
METRICS = FD_METRICS + TRAJECTORY_METRICS


@dataclass(frozen=True)
class QAConfig:
    """Everything a QA run needs; plain data, so it travels to Ray actors."""

    output: str  # the job output read (local directory or s3://bucket/prefix)
    report: str  # where qa outputs are written (local directory or s3://...)
    metrics: tuple[str, ...] = METRICS
    weights_dir: str | None = None
    evaluator: str | None = None  # resolved evaluator checkpoint directory; None: FD-drive skipped
    evaluator_missing: str | None = None  # the configured path that was not found
    dims: int = PROTOCOL_DIMS
    bootstrap: int = 200
    encoding: str = "mp4"  # codec of the generated shards; the recorded futures go through the same
    crf: int = 18
    endpoint_url: str | None = None
    region: str | None = None
    executor: str = "local"
    ray_address: str = "local"
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    device: str | None = None
    seed: int = 0
    gallery: int = 4  # seed points shown with their generated futures in report.md (0: none)
    baselines: bool = True  # the repeat-last and warp-only figures beside each Fréchet distance
    unavailable: tuple[
        tuple[str, str], ...
    ] = ()  # (metric, reason) dropped by without_missing_weights

    def wants(self, metric: str) -> bool:
        return metric in self.metrics

    def skipped(self) -> dict[str, str]:
        """Requested metrics that cannot run, with the reason."""
        skipped = dict(self.unavailable)
        if self.wants("fd_drive") and self.evaluator is None:
            skipped["fd_drive"] = (
                f"FD-drive skipped: the evaluator checkpoint {self.evaluator_missing} is missing "
                f"(it is trained separately from the model under test; see checkpoints/README.md)"
            )
        return skipped


def resolve_evaluator(path: str | Path) -> Path | None:
    """The evaluator directory: ``path`` as given, else (when relative) under the folder of the
    shipped checkpoints (the checkout, or the installed package: :func:`schemas.shipped.data_root`);
    None when neither exists."""
    from schemas.shipped import data_root

    p = Path(path).expanduser()
    for candidate in (p, data_root() / p) if not p.is_absolute() else (p,):
        if candidate.is_dir():
            return candidate
    return None


def qa_config(
    output: str, report: str, qa: QASpec, job: JobSpec | None = None, **overrides
) -> QAConfig:
    """Settings from a job's ``qa`` section (and its encoding, storage and resources), then
    ``overrides`` (command-line values; None means not given)."""
    values = {
        "metrics": (*qa.metrics, "action_video_agreement"),
        "weights_dir": qa.weights_dir,
        "bootstrap": qa.bootstrap,
        "evaluator": qa.evaluator,
    }
    if job is not None:
        values.update(
            encoding=job.encoding.format,
            crf=job.encoding.crf,
            endpoint_url=job.storage.endpoint_url,
            region=job.storage.region,
            workers=job.resources.workers,
            gpus_per_worker=job.resources.gpus_per_worker,
            cpus_per_worker=job.resources.cpus_per_worker,
        )
    values.update({k: v for k, v in overrides.items() if v is not None})
    configured = str(values.pop("evaluator"))
    found = resolve_evaluator(configured)
    config = QAConfig(
        output=output,
        report=report,
        evaluator=str(found) if found else None,
        evaluator_missing=None if found else configured,
        **{k: tuple(v) if k == "metrics" else v for k, v in values.items()},
    )
    return replace(config, metrics=tuple(m for m in METRICS if m in config.metrics))


def report_dir_of(output: str) -> str:
    """``OUT/qa`` for a job output ``OUT``."""
    return f"{output.rstrip('/')}/qa" if output.startswith("s3://") else str(Path(output) / "qa")
