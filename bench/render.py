"""Rendering speed of the procedural world: multi-view frames per second on one core.

Simulates one drive, then renders every frame's three views (128x128 by default) and reports
frames per second for rendering alone and for simulation + rendering. The last line printed is a
JSON object; ``multiview_fps`` is the rendering figure the scenes issue asks for (>= 25).

    python bench/render.py [--frames 150] [--size 128] [--weather clear_noon]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, as the target says

import cv2  # noqa: E402

cv2.setNumThreads(1)

from scenes.procedural.drive import DriveSpec, ProceduralScene, ground_of_town  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--weather", default="clear_noon")
    p.add_argument("--town-seed", type=int, default=1)
    p.add_argument("--route-seed", type=int, default=3)
    args = p.parse_args()

    ground_of_town(args.town_seed)  # texture drawing is once per town, not per frame
    t0 = time.perf_counter()
    scene = ProceduralScene(
        DriveSpec(
            args.town_seed, args.route_seed, args.weather, args.frames, (args.size, args.size)
        )
    )
    sim_s = time.perf_counter() - t0
    scene.images(0)  # renderer set-up (per-camera ray tables)
    t0 = time.perf_counter()
    for i in range(len(scene)):
        scene.images(i)
    render_s = time.perf_counter() - t0
    result = {
        "bench": "render",
        "frames": args.frames,
        "size": args.size,
        "views": len(scene.views),
        "weather": args.weather,
        "multiview_fps": round(args.frames / render_s, 2),
        "simulate_fps": round(args.frames / sim_s, 2),
        "end_to_end_fps": round(args.frames / (sim_s + render_s), 2),
        "target_multiview_fps": 25.0,
        "multiview_fps_over_target": round(args.frames / render_s / 25.0, 2),
        "machine": (
            f"{platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()}"
        ).strip(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
