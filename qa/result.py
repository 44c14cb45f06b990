"""What a QA run produced: its rows, the extractors used, what was skipped, files written."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class QAResult:
    rows: list[dict]
    extractors: dict[str, str]
    skipped: dict[str, str]
    details: dict = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    gallery: list[str] = field(default_factory=list)  # report-relative PNG names
