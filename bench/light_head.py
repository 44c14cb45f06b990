"""Can the vision encoder tell the traffic light's colour? The stage-1 light head, and a
class-balanced linear probe refitted on the same frozen light token, scored on held-out recorded
drives by distance to the stop line.

The planner reads that token, and InterFuser's red-light rule (:mod:`driving.light_rule`) reads the
head, or the light reader where the model has one (``vision.light_reader``: a small network on the
centre view beside the encoder, trained on the light within 10 m of its stop line), scored here as
``reader``. If even the balanced probe says "stop" (red or yellow above 0.3) on most green frames,
the colour is not in the token: no planner or rule built on it can stop for red and go on green.

The last line is a JSON object: per reader (``head``, ``probe``) and distance band, the share of
frames where the light is red or yellow that read "stop" (``stop_on_stop``) and the share of green
frames that read "stop" (``stop_on_green``), each with its N and Wilson 95 % interval;
``stop_on_none`` beyond 45 m or without a light.

A checkpoint whose encoder sees the centre view (``vision.center_view`` or ``vision.light_reader``)
is fed it.

``--figure PATH`` draws, for the first red and the first green frame of each band, the front view
beside the centre view (the front camera's centre quarter at full size, LMDrive's
``rgb_center``).

    python bench/light_head.py [--checkpoint demo] [--train-towns 20] [--held-out-towns 8]
        [--figure docs/light_focus.png]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from quality import HELD_OUT_FIRST, wilson_interval

from closedloop.model_driver import stop_probability
from driving.light_rule import STOP_THRESHOLD
from lmgendrive.checkpoint import load_checkpoint
from lmgendrive.model import LMGenDrive
from lmgendrive.vision import LIGHT_CLASSES
from scenes.procedural.drive import DriveSpec, ProceduralScene
from scenes.sheet import write_png
from schemas.scene import CENTER_VIEW, WEATHERS

BANDS = ((0.0, 10.0), (10.0, 25.0), (25.0, 45.0))
FRAMES, EVERY = 400, 2


def light_tokens(
    model: LMGenDrive, scenes: list[ProceduralScene]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The frozen light token (N, D), the light class and the distance to the stop line of every
    ``EVERY``-th frame of ``scenes``, and the light reader's class probabilities (N, 4) where the
    model has one (else None)."""
    tokens, classes, gaps, read = [], [], [], []
    pool = model.config.vision.bev_pool
    for scene in scenes:
        idx = range(0, FRAMES, EVERY)
        views = model.config.vision_views
        frames = np.stack([np.stack([scene.images(i)[v] for v in views]) for i in idx])
        with torch.no_grad():
            visual = model.vision(model.pixels(frames[:, None], "frames")[:, 0])
            reader = model.vision.near_light_logits(visual)
        # the light query's output: the Q-Former input's last token
        tokens.append(visual.for_qformer(pool)[:, -1].float().numpy())
        if reader is not None:
            read.append(reader.float().softmax(-1).numpy())
        for i in idx:
            m = scene.measurements(i)
            classes.append(LIGHT_CLASSES.index(m.light_state))
            gaps.append(m.light_distance)
    reads = np.concatenate(read) if read else None
    return np.concatenate(tokens), np.array(classes), np.array(gaps), reads


def balanced_probe(head: torch.nn.Linear, x: np.ndarray, y: np.ndarray) -> torch.nn.Linear:
    """``head`` refitted on (x, y) with inverse-frequency class weights (full-batch Adam)."""
    probe = torch.nn.Linear(head.in_features, head.out_features)
    probe.load_state_dict(head.state_dict())
    counts = np.bincount(y, minlength=len(LIGHT_CLASSES)).astype(np.float64)
    weight = torch.as_tensor(counts.sum() / np.maximum(counts, 1) / len(counts), dtype=torch.float)
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for _ in range(2000):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(xt), yt, weight=weight).backward()
        opt.step()
    return probe


def stop_rates(probs: np.ndarray, y: np.ndarray, gaps: np.ndarray) -> dict:
    """Share of frames reading "stop" per band, on red-or-yellow and on green frames."""
    says_stop = np.array([stop_probability(p) > STOP_THRESHOLD for p in probs])
    red, green = LIGHT_CLASSES.index("red"), LIGHT_CLASSES.index("green")
    stop_truth = np.isin(y, [red, LIGHT_CLASSES.index("yellow")])
    out = {}
    for lo, hi in BANDS:
        band = (gaps >= lo) & (gaps < hi)
        for name, truth in (("stop_on_stop", stop_truth), ("stop_on_green", y == green)):
            sel = band & truth
            out[f"{name}_{lo:.0f}_{hi:.0f}m"] = _share(says_stop[sel])
    out["stop_on_none"] = _share(says_stop[y == LIGHT_CLASSES.index("none")])
    return out


def _share(hits: np.ndarray) -> dict:
    """The share of True with its N and Wilson 95 % interval (frames of a drive are not
    independent: the interval is a lower bound on the uncertainty)."""
    if len(hits) == 0:
        return {"share": None, "n": 0}
    share = float(hits.mean())
    ci = [round(v, 3) for v in wilson_interval(share, len(hits))]
    return {"share": round(share, 3), "n": len(hits), "ci95": ci}


def drives(first: int, count: int, size: tuple[int, int], center: bool) -> list[ProceduralScene]:
    """Route 0 of ``count`` towns from ``first``, weathers cycled (``center``: with the centre
    view)."""
    return [
        ProceduralScene(
            DriveSpec(first + k, 0, WEATHERS[k % len(WEATHERS)], FRAMES, size, center_view=center)
        )
        for k in range(count)
    ]


def focus_figure(scenes: list[ProceduralScene], path: str) -> None:
    """Rows: the first red, then the first green frame of each band of ``scenes`` (drawn with the
    centre view); left the front view, right the centre view: the front camera's centre quarter
    at full size."""
    found: dict[tuple[str, float], tuple[ProceduralScene, int]] = {}
    for scene in scenes:
        for i in range(0, FRAMES, EVERY):
            m = scene.measurements(i)
            for lo, hi in BANDS:
                key = (m.light_state, lo)
                if m.light_state in ("red", "green") and lo <= m.light_distance < hi:
                    found.setdefault(key, (scene, i))
    rows = []
    for state in ("red", "green"):
        for lo, _ in BANDS:
            if (state, lo) not in found:
                continue
            images = found[(state, lo)][0].images(found[(state, lo)][1])
            rows.append(np.concatenate([images["front"], images[CENTER_VIEW]], axis=1))
    sheet = np.concatenate(rows, axis=0).repeat(2, axis=0).repeat(2, axis=1)
    write_png(sheet, Path(path))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="demo")
    p.add_argument("--train-towns", type=int, default=20, help="training towns 1.. for the probe")
    p.add_argument("--held-out-towns", type=int, default=8)
    p.add_argument("--figure", help="write the focus-view figure here (PNG)")
    args = p.parse_args()
    start = time.time()
    torch.manual_seed(0)
    model = load_checkpoint(args.checkpoint)[0]
    size = tuple(model.config.image_size)
    center = model.config.vision.sees_center
    fit = drives(1, args.train_towns, size, center)
    scenes = drives(HELD_OUT_FIRST, args.held_out_towns, size, center)
    if args.figure:
        focus_figure(drives(HELD_OUT_FIRST, args.held_out_towns, size, True), args.figure)
    x_fit, y_fit, _, _ = light_tokens(model, fit)
    x, y, gaps, read = light_tokens(model, scenes)
    head = model.vision.light_head.float()
    probe = balanced_probe(head, x_fit, y_fit)
    result = {}
    with torch.no_grad():
        for name, reader in (("head", head), ("probe", probe)):
            probs = reader(torch.as_tensor(x)).softmax(-1).numpy()
            result[name] = stop_rates(probs, y, gaps)
            print(f"{name}: " + json.dumps(result[name]))
    if read is not None:
        result["reader"] = stop_rates(read, y, gaps)
        print("reader: " + json.dumps(result["reader"]))
    print(
        json.dumps(
            {
                "bench": "light_head",
                **result,
                "frames_fit": len(y_fit),
                "frames_held_out": len(y),
                "checkpoint": args.checkpoint,
                "machine": platform.processor() or platform.machine(),
                "seconds": round(time.time() - start),
            }
        )
    )


if __name__ == "__main__":
    main()
