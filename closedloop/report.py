"""The closed-loop report: a table in the shape of the paper's Table 1 (DS, RC, IS per agent and
track, each with its N, a bootstrap 95 % interval over routes and the mean +- std over seeds),
infraction counts, a map of routes (planned vs driven, infractions marked) and a route's video."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
from scipy.stats import bootstrap

from closedloop.routes import TRACKS, BuiltRoute
from driving.leaderboard import PENALTY, TERMINATIONS
from storage.atomic import atomic_path, write_bytes
from storage.media import encode_mp4

METRICS = ("ds", "rc", "is")
AGENT_ORDER = (
    "expert",
    "label_oracle",
    "model",
    "model_light_rule",
    "model_lane_oracle",
    "model_lane_assist",
    "model_assisted",
    "random_instruction",
    "lane_keeping",
)


def agents_in_order(summary: dict) -> list[str]:
    """The agents of ``summary`` in :data:`AGENT_ORDER`, any other after them by name: a table
    leaves none out."""
    return [a for a in AGENT_ORDER if a in summary] + sorted(set(summary) - set(AGENT_ORDER))


def _interval(values: np.ndarray) -> list[float]:
    """Percentile bootstrap 95 % interval of the mean (scipy), degenerate data included."""
    if len(values) < 2 or np.ptp(values) == 0:
        return [float(values.mean()), float(values.mean())]
    res = bootstrap((values,), np.mean, confidence_level=0.95, method="percentile", random_state=0)
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def summarize(rows: list[dict]) -> dict:
    """Per agent and track: N routes, seeds, and per metric the mean over every drive, the
    interval (routes resampled, each route's value averaged over its seeds) and the mean +- std of
    the seeds' means; infraction counts and how routes ended."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["agent"], r["track"])].append(r)
    out: dict = {}
    for (agent, track), rs in sorted(groups.items()):
        seeds = sorted({r["seed_run"] for r in rs})
        entry = {"routes": len({r["route_id"] for r in rs}), "seeds": len(seeds)}
        for m in METRICS:
            by_route: dict[str, list[float]] = defaultdict(list)
            by_seed: dict[int, list[float]] = defaultdict(list)
            for r in rs:
                by_route[r["route_id"]].append(r[m])
                by_seed[r["seed_run"]].append(r[m])
            per_route = np.array([np.mean(v) for v in by_route.values()])
            seed_means = np.array([np.mean(v) for v in by_seed.values()])
            entry[m] = {
                "mean": float(np.mean([r[m] for r in rs])),
                "ci95": _interval(per_route),
                "seed_std": float(seed_means.std(ddof=1)) if len(seed_means) > 1 else 0.0,
            }
        entry["infractions"] = {
            k[2:]: int(sum(r.get(k, 0) for r in rs))
            for k in sorted({k for r in rs for k in r if k.startswith("n_")})
            if k[2:] in PENALTY
        }
        entry["km"] = float(sum(r["length_m"] * r["rc"] / 100.0 for r in rs) / 1000.0)
        ended: dict[str, int] = defaultdict(int)
        for r in rs:
            ended[r["ended_by"]] += 1
        entry["ended_by"] = dict(ended)
        out.setdefault(agent, {})[track] = entry
    return out


def paired_difference(rows: list[dict], agent: str, baseline: str, metric: str = "ds") -> dict:
    """Per track, ``agent``'s ``metric`` minus ``baseline``'s on the drives both made (same route,
    same seed run): the mean difference, its bootstrap 95 % interval over routes and the number of
    pairs. Agents driven on route sets of different difficulty compare fairly only this way."""
    drives: dict[tuple[str, str], dict] = defaultdict(dict)
    for r in rows:
        if r["agent"] in (agent, baseline):
            drives[(r["route_id"], r["seed_run"])][r["agent"]] = r
    by_track: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (route, _), pair in drives.items():
        if len(pair) == 2:
            by_track[pair[agent]["track"]][route].append(
                pair[agent][metric] - pair[baseline][metric]
            )
    out = {}
    for track, by_route in sorted(by_track.items()):
        per_route = np.array([np.mean(v) for v in by_route.values()])
        n = sum(len(v) for v in by_route.values())
        mean = float(np.mean([d for v in by_route.values() for d in v]))
        out[track] = {"mean": mean, "ci95": _interval(per_route), "pairs": n}
    return out


def paired_markdown(paired: dict) -> str:
    """:func:`paired_difference` per agent against lane keeping as a table: DS difference per
    track with its interval and number of drive pairs."""
    lines = ["| agent | track | DS - lane keeping's | pairs |", "|---|---|---|---|"]
    for agent, tracks in paired.items():
        for track, d in tracks.items():
            lo, hi = d["ci95"]
            lines.append(
                f"| {agent} | {track} | {d['mean']:+.1f} [{lo:+.1f}, {hi:+.1f}] | {d['pairs']} |"
            )
    lines.append("")
    lines.append(
        "The same routes and seed runs for both agents, so route difficulty cancels: the mean "
        "difference [bootstrap 95 % interval over routes]."
    )
    return "\n".join(lines)


def table_markdown(summary: dict) -> str:
    """The Table-1-shaped table: one row per agent, DS / RC / IS per track."""
    tracks = [t for t in ("long", "short", "tiny") if any(t in v for v in summary.values())]
    head = "| agent | " + " | ".join(f"{t} DS | {t} RC | {t} IS" for t in tracks)
    lines = [head + " | N routes x seeds |", "|---|" + "---|" * (3 * len(tracks) + 1)]
    for agent in agents_in_order(summary):
        cells = []
        for t in tracks:
            e = summary[agent].get(t)
            for m in METRICS:
                if e is None:
                    cells.append("-")
                    continue
                v, (lo, hi), sd = e[m]["mean"], e[m]["ci95"], e[m]["seed_std"]
                fmt = "{:.2f}" if m == "is" else "{:.1f}"
                cells.append(
                    f"{fmt.format(v)} ± {fmt.format(sd)} [{fmt.format(lo)}, {fmt.format(hi)}]"
                )
        n = " / ".join(
            f"{e['routes']} x {e['seeds']}" for e in (summary[agent].get(t) for t in tracks) if e
        )
        lines.append(f"| {agent} | " + " | ".join(cells) + f" | {n} |")
    lines.append("")
    lines.append(
        "Mean over every drive ± std of the seeds' means [bootstrap 95 % interval over routes], "
        f"N per track in the order {' / '.join(tracks)}. Track lengths (m): "
        + ", ".join(f"{t} {lo:.0f}-{hi:.0f}" for t, (lo, hi) in TRACKS.items())
        + "."
    )
    return "\n".join(lines)


def infractions_markdown(summary: dict) -> str:
    """Infractions and route ends per agent and track."""
    lines = ["| agent | track | km driven | infractions | route ends |", "|---|---|---|---|---|"]
    for agent in agents_in_order(summary):
        for track, e in summary[agent].items():
            inf = ", ".join(f"{k} {v}" for k, v in e["infractions"].items()) or "none"
            ends = ", ".join(f"{k} {v}" for k, v in sorted(e["ended_by"].items()))
            lines.append(f"| {agent} | {track} | {e['km']:.2f} | {inf} | {ends} |")
    return "\n".join(lines)


EVENT_MARKERS = {
    "collision_vehicle": "x",
    "collision_pedestrian": "^",
    "collision_static": "D",
    "red_light": "o",
    **{end: "s" for end in TERMINATIONS},
}


def draw_map(built: BuiltRoute, rows: list[dict], path: Path) -> None:
    """A top-down map of one route: the town's roads, the planned route from start to goal, each
    drive's path (``rows`` of :meth:`~closedloop.run.RouteResult.row`) in its agent's colour, and
    its infractions and early end as :data:`EVENT_MARKERS` (one legend entry per kind)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    town = built.town
    fig, ax = plt.subplots(figsize=(6.5, 6.5))
    for node in town.nodes:
        for k in town.arms(node):
            other = town.neighbour(node, k)
            a, b = town.node_xy(node), town.node_xy(other)
            ax.plot([a[0], b[0]], [a[1], b[1]], color="0.85", lw=7, solid_capstyle="butt")
    s = np.linspace(built.s_start, built.s_goal, 400)
    planned = built.route.path.at(s)
    ax.plot(planned[:, 0], planned[:, 1], "k--", lw=1.5, label="planned route")
    ax.plot(*planned[0], "ko", ms=6)
    ax.plot(*planned[-1], "k*", ms=12, label="goal")
    colors = {
        "expert": "tab:green",
        "model": "tab:blue",
        "model_light_rule": "tab:cyan",
        "model_assisted": "tab:red",
        "model_lane_oracle": "tab:olive",
        "random_instruction": "tab:purple",
    }
    kinds: set[str] = set()
    for r in rows:
        xy = np.array(r["path"])
        c = colors.get(r["agent"], "tab:orange")
        ax.plot(xy[:, 0], xy[:, 1], color=c, lw=1.8, label=f"{r['agent']} (DS {r['ds']:.0f})")
        for kind, x, y in r["events"]:
            ax.plot(x, y, EVENT_MARKERS.get(kind, "x"), color=c, ms=8, mew=2, mfc="none")
            kinds.add(kind)
    for kind in sorted(kinds):  # one legend entry per kind of event, in black
        ax.plot([], [], EVENT_MARKERS.get(kind, "x"), color="k", mfc="none", mew=2, label=kind)
    seen = np.concatenate([planned] + [np.array(r["path"]) for r in rows])
    lo, hi = seen.min(axis=0) - 25.0, seen.max(axis=0) + 25.0
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    spec = built.spec
    title = f"{spec.route_id}: town {spec.town}, {spec.weather}, {built.length:.0f} m, turns "
    ax.set_title(title + ", ".join(spec.turns), fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def video_frame(images: dict[str, np.ndarray], views, caption: str, scale: int = 3) -> np.ndarray:
    """The views side by side, enlarged, with a caption bar (RGB uint8)."""
    row = np.concatenate([images[v] for v in views], axis=1)
    row = cv2.resize(
        row, (row.shape[1] * scale, row.shape[0] * scale), interpolation=cv2.INTER_NEAREST
    )
    bar = np.full((28, row.shape[1], 3), 255, np.uint8)
    cv2.putText(
        bar, caption[:90], (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA
    )
    return np.concatenate([row, bar], axis=0)


def write_video(frames: list[np.ndarray], path: Path, fps: float = 10.0) -> None:
    """An mp4 of the frames (even sizes), written atomically."""
    arr = np.stack(frames)
    h, w = arr.shape[1] - arr.shape[1] % 2, arr.shape[2] - arr.shape[2] % 2
    write_bytes(path, encode_mp4(arr[:, :h, :w], fps=fps))
