"""What a QA run produced: its rows, the extractors used, what was skipped, files written, and the
damaged shards left out."""

from __future__ import annotations

from dataclasses import dataclass, field

# what an instruction-adherence row reads, by its view: the predicted waypoints or the front video
ADHERENCE_VIEWS = {"plan": "pooled", "video": "front"}


@dataclass
class QAResult:
    rows: list[dict]
    extractors: dict[str, str]
    skipped: dict[str, str]
    details: dict = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    gallery: list[str] = field(default_factory=list)  # report-relative PNG names
    excluded: dict[str, str] = field(default_factory=dict)  # shard key -> why it was left out
    # the pooled Fréchet figures of the "do nothing" baselines: QA rows plus "baseline"
    # (repeat_last, warp_only)
    baselines: list[dict] = field(default_factory=list)
