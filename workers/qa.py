"""The QA feature stage: :class:`qa.extract.FeatureRunner` as a pool stage
(one per GPU or CPU slot).

Each instance loads the extractors once and accumulates the statistics of the shards it is given;
the QA run takes every instance's statistics after each horizon (``take``) and merges them
(statistics merge exactly, so the result does not depend on how shards were spread). Only
statistics and small per-sample records cross the object store, never frames.
"""

from __future__ import annotations

import os
import platform

from qa.extract import FeatureRunner


class QAFeatureWorker(FeatureRunner):
    """:class:`FeatureRunner` plus a description of where it runs."""

    def info(self) -> dict:
        return {
            "host": platform.node(),
            "pid": os.getpid(),
            "device": str(self.device),
            "extractors": self.descriptions(),
        }
