"""Closed-loop driving benchmark in the procedural world, scored as the CARLA leaderboard scores
LangAuto (paper Table 1's shape): agents ``model``, ``expert`` (the ceiling), ``lane_keeping`` and
``random_instruction`` on the tracks ``long``, ``short`` and ``tiny`` (routes drawn on the
closed-loop towns 971+, weathers cycled), ``--seeds`` seed runs.

Writes the report folder (``--out``: report.md, results.json, drives.jsonl, maps, a video); a
rerun with the same ``--out`` resumes. The last line is a JSON object with ``ds``, ``rc``, ``is``
as {agent: {track: mean}}, ``fps`` (the model's closed loop: render + plan + physics, frames per
second of one process), ``plan_ms`` (median act latency of the model), ``routes_per_track``,
``seeds``, and the goals' margins: ``min_expert_ds`` (worst track), ``min_model_over_lane_keeping``
(DS difference, worst track), ``min_model_over_lane_keeping_same_drives`` (the same on the drives
both made: the model's routes and seeds, paired), ``min_model_over_random_tiny_short``; where the
checkpoint has the lane and light readers, also the agent ``model_assisted`` (the model through
its readers in InterFuser's safety controller) and ``min_assisted_over_lane_keeping``.

At the full size (50 routes per track, 3 seeds, 1800 drives) this takes hours on 2 cores: a model
that does not move drives every route to its timeout. The drives are kept in ``--out`` as they
finish, so it can be stopped and rerun.

    python bench/closed_loop.py [--routes-per-track 50] [--seeds 3] [--workers 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from closedloop.agents import AGENTS
from closedloop.evaluate import run_drives, write_report
from closedloop.routes import TRACKS, sample_routes
from lmgendrive.checkpoint_meta import source_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--routes-per-track", type=int, default=50)
    p.add_argument(
        "--model-routes-per-track",
        type=int,
        help="routes per track for the agents that see (model, random_instruction); default: "
        "--routes-per-track. They cost 10-20x a blind agent's drive",
    )
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--checkpoint", default="demo")
    p.add_argument("--out", default="out/closed_loop")
    args = p.parse_args()
    start = time.time()
    per_track = {t: sample_routes(t, args.routes_per_track, 0) for t in TRACKS}
    routes = [s for t in TRACKS for s in per_track[t]]
    seeing = args.model_routes_per_track or args.routes_per_track
    size = tuple(source_config(args.checkpoint).image_size)
    out = Path(args.out)
    blind = [a for a in AGENTS if a in ("expert", "lane_keeping")]
    rows = run_drives(routes, blind, args.seeds, args.checkpoint, out, size, args.workers)
    model_routes = [s for t in TRACKS for s in per_track[t][:seeing]]
    # the model as the paper drives it, and told random instructions; and, where the checkpoint
    # has its readers, through them in InterFuser's safety controller (model_assisted): a row of
    # its own, never the model's
    vision = source_config(args.checkpoint).vision
    readers = vision.lane_reader and vision.light_reader
    model_agents = ["model", "random_instruction", *(["model_assisted"] if readers else [])]
    rows += run_drives(
        model_routes, model_agents, args.seeds, args.checkpoint, out, size, args.workers
    )
    results = write_report(rows, routes, blind + model_agents, args.checkpoint, out, size)
    summary = results["summary"]
    figure = {
        m: {a: {t: round(e[m]["mean"], 3) for t, e in tr.items()} for a, tr in summary.items()}
        for m in ("ds", "rc", "is")
    }
    ds = figure["ds"]
    margins = {
        "min_expert_ds": min(ds["expert"].values()),
        **(
            {
                "min_assisted_over_lane_keeping": min(
                    ds["model_assisted"][t] - ds["lane_keeping"][t] for t in TRACKS
                )
            }
            if readers
            else {}
        ),
        "min_model_over_lane_keeping": min(ds["model"][t] - ds["lane_keeping"][t] for t in TRACKS),
        # the same difference on the drives both made (the model's routes, same seeds): the
        # lane-keeping mean above is over every route, the model's over the first few
        "min_model_over_lane_keeping_same_drives": min(
            d["mean"] for d in results["over_lane_keeping_same_drives"]["model"].values()
        ),
        "min_model_over_random_tiny_short": min(
            ds["model"][t] - ds["random_instruction"][t] for t in ("tiny", "short")
        ),
    }
    print(f"report: {out / 'report.md'}")
    print(
        json.dumps(
            {
                "bench": "closed_loop",
                **figure,
                "fps": round(results["speed"]["model"]["fps"], 2),
                "plan_ms": round(results["speed"]["model"]["act_ms_median"], 1),
                "routes_per_track": args.routes_per_track,
                "model_routes_per_track": seeing,
                "seeds": args.seeds,
                **{k: round(v, 3) for k, v in margins.items()},
                "checkpoint": args.checkpoint,
                "machine": platform.processor() or platform.machine(),
                "seconds": round(time.time() - start),
            }
        )
    )


if __name__ == "__main__":
    main()
