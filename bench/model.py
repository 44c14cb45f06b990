"""LMGenDrive latency: online plan() vs one generation step(), and step() at 8 vs 128 history
frames.

For the ``tiny`` and ``demo`` presets (random weights; latency does not depend on them), batch 1,
on the device :func:`lmgendrive.device.pick_device` chooses. ``plan_ms`` includes observing one new
multi-view frame. Each timed call starts from a fresh state holding the stated number of history
frames (the LLM sees at most ``llm.history_frames`` of them). Medians over ``--repeats`` rounds
after one warm-up round. The last output line is one JSON object keyed by preset.

    python bench/model.py [--presets tiny demo] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from lmgendrive.checkpoint import build_untrained
from lmgendrive.device import pick_device
from lmgendrive.model import LMGenDrive
from lmgendrive.rollout import RolloutState

INSTRUCTION = "After 30 meters, execute a left turn."


def _time_ms(fn: Callable[[RolloutState], object], state: RolloutState) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(state)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000.0


def bench_preset(model: LMGenDrive, repeats: int) -> dict[str, float]:
    """Median latencies; the cases run round-robin so slow drift of a shared machine hits all
    alike."""
    cfg = model.config
    h, w = cfg.image_size
    rng = np.random.default_rng(0)

    def frames(t: int) -> np.ndarray:
        return rng.integers(0, 256, (1, len(cfg.views), t, h, w, 3), dtype=np.uint8)

    def state(t: int) -> RolloutState:
        return model.start(frames(t), [INSTRUCTION], seeds=[0], speed=[5.0])

    new_frame = frames(1)[:, :, 0]
    cases = {
        "plan": (8, lambda s: model.plan(s, new_frame, speed=[5.0])),
        "hist8": (8, model.step),
        "hist128": (128, model.step),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(repeats + 1):
        for name, (history, fn) in cases.items():
            ms = _time_ms(fn, state(history))
            if i:  # the first round is a warm-up
                times[name].append(ms)
    plan_ms, step8, step128 = (statistics.median(times[n]) for n in ("plan", "hist8", "hist128"))
    return {
        "plan_ms": round(plan_ms, 2),
        "step_ms": round(step8, 2),
        "plan_over_step": round(plan_ms / step8, 4),
        "step_ms_hist8": round(step8, 2),
        "step_ms_hist128": round(step128, 2),
        "hist128_over_hist8": round(step128 / step8, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "demo"])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    device = pick_device()
    results = {}
    for preset in args.presets:
        model = build_untrained(preset).to(device).eval()
        results[preset] = bench_preset(model, args.repeats)
        results[preset]["device"] = str(device)
        results[preset]["threads"] = torch.get_num_threads()
        print(f"{preset}: {results[preset]}", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
