"""Planner batches of cached vision tokens vs of pixels (``planner.token_cache`` in a training
recipe).

One training iteration's planner batch (forward + backward of ``planner_loss``, stage 3's trainable
parameters) on the demo checkpoint, 48 windows of 3 views x 4 context frames at 64 px: once
encoding the pixels with the frozen vision encoder, once reading tokens encoded beforehand, timed
alternately in one run (median of the repeats). The cache's one-off cost is reported per frame
(each frame is encoded once, and a frame falls in several windows). Last line: a JSON object with
``tokens_over_frames`` (time per batch, tokens / pixels) and ``cache_ms_per_frame``.

    python bench/planner.py [--windows 48] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from lmgendrive.checkpoint import load_checkpoint
from lmgendrive.device import pick_device
from lmgendrive.frames import to_pixels
from lmgendrive.train.losses import DriveBatch, planner_loss
from lmgendrive.train.stages import set_stage

CONTEXT = 4


def timed_loss(model, batch: DriveBatch) -> float:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    planner_loss(model, batch).loss.backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    device = pick_device()
    torch.manual_seed(0)
    model, _ = load_checkpoint("demo", device)
    set_stage(model, 3)
    model.train()
    n, (h, w) = args.windows, model.config.image_size
    frames = torch.randint(
        0, 256, (n, len(model.config.views), CONTEXT, h, w, 3), dtype=torch.uint8
    )
    common = {
        "instructions": ["turn left at the next intersection"] * n,
        "speed": torch.rand(n) * 8,
        "prev_waypoints": torch.rand(n, model.config.vision.num_waypoints, 2),
        "waypoints": torch.rand(n, 1, model.config.vision.num_waypoints, 2),
        "completed": torch.zeros(n, 1),
        "future_frames": None,
    }
    start = time.perf_counter()
    with torch.no_grad():
        tokens = model.vision_tokens(
            to_pixels(frames, model.config.image_size, device).transpose(1, 2)
        )
    cache_ms = (time.perf_counter() - start) * 1000 / (n * CONTEXT)
    pixel_batch = DriveBatch(frames=frames, **common).to(device)
    token_batch = DriveBatch(frames=None, tokens=tokens, **common).to(device)
    timed_loss(model, pixel_batch), timed_loss(model, token_batch)  # warm-up
    pixels_s, tokens_s = [], []
    for _ in range(args.repeats):
        pixels_s.append(timed_loss(model, pixel_batch))
        tokens_s.append(timed_loss(model, token_batch))
    pixel_ms, token_ms = statistics.median(pixels_s) * 1000, statistics.median(tokens_s) * 1000
    print(
        f"{n} windows: pixels {pixel_ms:.0f} ms, cached tokens {token_ms:.0f} ms; "
        f"encoding a frame for the cache {cache_ms:.1f} ms"
    )
    print(
        json.dumps(
            {
                "windows": n,
                "pixels_ms": round(pixel_ms, 1),
                "tokens_ms": round(token_ms, 1),
                "tokens_over_frames": round(token_ms / pixel_ms, 4),
                "cache_ms_per_frame": round(cache_ms, 2),
                "device": str(device),
            }
        )
    )


if __name__ == "__main__":
    main()
