"""Learning-rate schedule: linear warm-up, then cosine decay to ``min_ratio`` x the base rate."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosine:
    """The lr multiplier at a step (a plain object, so LambdaLR's state dict stays JSON)."""

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup: int, total: int, min_ratio: float
) -> LambdaLR:
    """A LambdaLR stepping once per iteration over ``total`` iterations."""
    return LambdaLR(optimizer, WarmupCosine(warmup, total, min_ratio))
