"""``lmgd drive``: closed-loop driving in the procedural world, scored as the CARLA leaderboard
scores LangAuto; :func:`add_parser` registers it on the ``lmgd`` sub-command parser."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

DESCRIPTION = """\
Drive routes of the procedural world in closed loop at 10 Hz (20 Hz physics): the renderer draws
the three views, the agent returns throttle / brake / steer, traffic, pedestrians and signals react.
Each route is a LangAuto-style sequence of navigation instructions issued at LMDrive's trigger
distances, with notices and misleading instructions. Scored as the CARLA leaderboard 1.0 scores
LangAuto: route completion RC, infraction score IS, DS = RC x IS. Routes come from a route file
(--route-file) or are drawn for a track (--track). Writes OUT/drives.jsonl (one line per drive; a
rerun resumes), OUT/report.md, OUT/results.json, a map per track and a video of one drive.

DAgger: --record DIR writes every model drive to DIR as an LMDrive-format route whose waypoints are
the expert's for each state the model drove into (World.expert_waypoints); drive training towns
(--towns) and give DIR to a training recipe's planner.onpolicy."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``drive``."""
    from closedloop.agents import AGENTS
    from closedloop.routes import FIRST_TOWN, TOWNS, TRACKS

    p = subparsers.add_parser(
        "drive", help="closed-loop driving scored as the CARLA leaderboard", description=DESCRIPTION
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--route-file", metavar="YAML", help="routes to drive (see README)")
    src.add_argument("--track", choices=sorted(TRACKS), help="draw routes of this track")
    p.add_argument("--routes", type=int, default=5, help="routes drawn for --track (default 5)")
    p.add_argument(
        "--agents", nargs="+", default=["model"], metavar="AGENT",
        help=f"agents to drive ({', '.join(AGENTS)}; default: model)",
    )  # fmt: skip
    p.add_argument("--checkpoint", default="demo", help="the model's checkpoint (default demo)")
    p.add_argument("--seeds", type=int, default=1, help="seed runs (traffic, instructions)")
    p.add_argument("--route-seed", type=int, default=0, help="seed drawing --track routes")
    p.add_argument("--workers", type=int, default=1, help="processes driving in parallel")
    p.add_argument(
        "--towns",
        metavar="FIRST-LAST",
        help="draw --track routes on these town seeds (default: the held-out closed-loop towns "
        f"{FIRST_TOWN}-{FIRST_TOWN + TOWNS - 1}); training towns for --record",
    )
    p.add_argument(
        "--record",
        metavar="DIR",
        help="record the model agents' drives there, labelled by the expert (DAgger)",
    )
    p.add_argument(
        "--start-speed",
        type=float,
        help="start every route at this speed, m/s (default: at rest as in CARLA, or the route "
        "file's start_speed); a diagnostic: does the agent drive once it moves?",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="where the report goes")
    p.set_defaults(func=cmd_drive)
    return p


def cmd_drive(args: argparse.Namespace) -> int:
    from closedloop.evaluate import check_agents, run_drives, write_report
    from closedloop.routes import MAX_START_SPEED, read_routes, sample_routes
    from lmgendrive.checkpoint_meta import source_config
    from schemas.errors import ConfigError

    for key in ("routes", "seeds", "workers"):
        if getattr(args, key) < 1:
            raise ConfigError(f"--{key} must be >= 1, got {getattr(args, key)}")
    check_agents(args.agents, args.checkpoint)
    if args.towns is not None and args.route_file:
        raise ConfigError("--towns draws --track routes; a --route-file names its own towns")
    towns = parse_towns(args.towns) if args.towns is not None else None
    routes = (
        read_routes(args.route_file)
        if args.route_file
        else sample_routes(args.track, args.routes, args.route_seed, towns)
    )
    if args.start_speed is not None:
        if not 0.0 <= args.start_speed <= MAX_START_SPEED:
            raise ConfigError(f"--start-speed must be in 0..{MAX_START_SPEED:g} m/s")
        routes = [replace(r, start_speed=args.start_speed) for r in routes]
    size = tuple(source_config(args.checkpoint).image_size)
    out = Path(args.out)
    record = Path(args.record) if args.record else None
    rows = run_drives(
        routes, args.agents, args.seeds, args.checkpoint, out, size, args.workers, record
    )
    results = write_report(rows, routes, args.agents, args.checkpoint, out, size)
    for agent, tracks in results["summary"].items():
        for track, e in tracks.items():
            print(
                f"{agent:18s} {track:6s} DS {e['ds']['mean']:5.1f}  RC {e['rc']['mean']:5.1f}  "
                f"IS {e['is']['mean']:.2f}  ({e['routes']} routes x {e['seeds']} seeds)"
            )
    print(f"report: {out / 'report.md'}")
    return 0


def parse_towns(text: str) -> list[int]:
    """``FIRST-LAST`` (inclusive town seeds) as a list; :class:`ConfigError` otherwise."""
    from schemas.errors import ConfigError

    first, sep, last = text.partition("-")
    if not (sep and first.isdigit() and last.isdigit() and int(first) <= int(last)):
        raise ConfigError(f"--towns {text!r}: expected FIRST-LAST town seeds, e.g. 1-40")
    return list(range(int(first), int(last) + 1))
