"""Readers made to say one thing whatever they see (the embedded checkpoint's are trained)."""

from __future__ import annotations

import torch

LANE_EVERYWHERE = torch.full((3,), 2.0)  # offset 2 m, heading 2 rad, in a lane
RED_EVERYWHERE = torch.tensor([-5.0, 5.0, 0.0, -5.0])  # LIGHT_CLASSES logits: red


def constant_head(reader: torch.nn.Module, output: torch.Tensor) -> None:
    """Make ``reader`` output ``output`` for any input."""
    with torch.no_grad():
        reader.head.weight.zero_()
        reader.head.bias.copy_(output)
