"""A closed-loop benchmark run: every (seed run, route, agent) driven, one JSON line per drive in
``OUT/drives.jsonl`` (a rerun skips the drives already there, so a long run resumes), then the
report (``OUT/report.md``, ``OUT/results.json``, maps of a route per track and a video of one).

Drives run in ``workers`` processes (one torch thread each; the model is loaded once per
process). A seed run changes each route's traffic, pedestrians and instruction draws, not the
route.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from closedloop.agents import (
    AGENTS,
    MODEL_AGENTS,
    ExpertAgent,
    LabelOracleAgent,
    LaneKeepingAgent,
    ModelAgent,
)
from closedloop.onpolicy import OnPolicyRecorder, index_onpolicy, write_onpolicy
from closedloop.report import (
    draw_map,
    infractions_markdown,
    paired_difference,
    paired_markdown,
    summarize,
    table_markdown,
    video_frame,
    write_video,
)
from closedloop.routes import RouteSpec, build_route, track_of
from closedloop.run import drive_route
from lmgendrive.checkpoint import check_checkpoint
from lmgendrive.checkpoint_meta import check_planner, check_readers
from schemas.errors import BadInputError
from storage.atomic import write_bytes
from storage.progress import progress

DRIVES_FILE = "drives.jsonl"
_MODEL: dict = {}  # per worker process: the loaded model


@dataclass(frozen=True)
class Drive:
    """One drive of a benchmark: a route in one seed run, by one agent."""

    spec: RouteSpec
    seed_run: int
    agent: str

    @property
    def key(self) -> str:
        moving = f"@{self.spec.start_speed:g}" if self.spec.start_speed else ""
        return f"{self.seed_run}/{self.spec.route_id}{moving}/{self.agent}"

    def seeded(self) -> RouteSpec:
        return replace(self.spec, seed=self.spec.seed + 100_003 * self.seed_run)


def make_agent(name: str, checkpoint: str):
    """The agent called ``name`` (the model loaded once per process)."""
    if name == "expert":
        return ExpertAgent()
    if name == "lane_keeping":
        return LaneKeepingAgent()
    if name == "label_oracle":
        return LabelOracleAgent()
    if checkpoint not in _MODEL:
        import torch

        from lmgendrive.checkpoint import load_checkpoint

        torch.set_num_threads(1)
        _MODEL[checkpoint] = load_checkpoint(checkpoint)[0]
    return ModelAgent(
        _MODEL[checkpoint],
        random_instructions=name == "random_instruction",
        light_rule=name == "model_light_rule",
        lane_oracle=name == "model_lane_oracle",
        lane_reader=name == "model_lane_assist",
        assisted=name == "model_assisted",
    )


def _drive(job: tuple[Drive, str, str | None, tuple[int, int], Path | None]) -> dict:
    drive, checkpoint, sha, image_size, record = job
    built, agent = build_route(drive.seeded()), make_agent(drive.agent, checkpoint)
    recorder = OnPolicyRecorder(agent) if record is not None else None
    if recorder is None:
        result = drive_route(built, agent, image_size)
    else:
        result = drive_route(built, recorder, image_size, recorder.on_frame)
        write_onpolicy(recorder.scene(built, onpolicy_name(drive, sha)), record)
    weights = {"model_sha256": sha} if drive.agent in MODEL_AGENTS else {}
    return {"key": drive.key, "seed_run": drive.seed_run, **weights, **result.row()}


def onpolicy_name(drive: Drive, sha: str | None) -> str:
    """The route folder of ``drive``'s on-policy recording, by weights ``sha`` (DAgger rounds drive
    the same routes with new weights into the same root)."""
    moving = f"_at{drive.spec.start_speed:g}" if drive.spec.start_speed else ""
    seed = drive.seeded().seed
    return f"onpolicy_{(sha or '')[:12]}_{drive.spec.route_id}_{seed}{moving}_{drive.agent}"


def check_agents(agents: Sequence[str], checkpoint: str) -> str | None:
    """:class:`BadInputError` for an unknown agent, a model agent without a trained planner or
    ``model_lane_assist`` or ``model_assisted`` without the readers they drive by;
    returns the checkpoint's weights sha256 when an agent drives with it."""
    unknown = [a for a in agents if a not in AGENTS]
    if unknown:
        raise BadInputError(f"unknown agent(s) {unknown}; valid: {', '.join(AGENTS)}")
    if not set(MODEL_AGENTS) & set(agents):
        return None
    check_planner(checkpoint)
    for agent in agents:
        check_readers(checkpoint, agent)
    return check_checkpoint(checkpoint)


def check_same_weights(done: dict[str, dict], sha: str | None, path: Path) -> None:
    """:class:`BadInputError` if a model drive recorded in ``path`` was driven with weights other
    than ``sha``: resuming would put two models' drives in one table."""
    for key, row in done.items():
        if row["agent"] in MODEL_AGENTS and row.get("model_sha256") != sha:
            raise BadInputError(
                f"{path}: drive {key} was driven by weights with sha256 "
                f"{row.get('model_sha256') or '(not recorded)'}, this run's checkpoint has {sha}; "
                "give another --out (or remove that folder) to benchmark these weights"
            )


def run_drives(
    routes: Sequence[RouteSpec],
    agents: Sequence[str],
    seeds: int,
    checkpoint: str,
    out: Path,
    image_size: tuple[int, int],
    workers: int = 1,
    record: Path | None = None,
) -> list[dict]:
    """Drive every route with every agent in ``seeds`` seed runs, appending each drive's row to
    ``out/drives.jsonl`` as it finishes; drives already there are not driven again. ``record``:
    write every model drive there as an on-policy LMDrive route (:mod:`closedloop.onpolicy`) and
    index every on-policy route there (earlier runs' too: DAgger aggregates)."""
    sha = check_agents(agents, checkpoint)
    if record is not None and set(agents) - set(MODEL_AGENTS):
        raise BadInputError(
            f"--record records the drives of model agents ({', '.join(MODEL_AGENTS)}); "
            f"not {', '.join(sorted(set(agents) - set(MODEL_AGENTS)))}"
        )
    path = out / DRIVES_FILE
    done = _read_rows(path)
    if sha is not None:
        check_same_weights(done, sha, path)
    out.mkdir(parents=True, exist_ok=True)
    drives = [Drive(spec, s, a) for s in range(seeds) for spec in routes for a in agents]
    todo = [d for d in drives if d.key not in done]
    jobs = [(d, checkpoint, sha, image_size, record) for d in todo]
    if path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with path.open("a") as sink:  # a run stopped mid-line: the next row starts a new line
            sink.write("\n")
    with progress(len(todo), "drives", "drive") as bar, path.open("a") as sink:
        if workers > 1 and len(jobs) > 1:
            os.environ.setdefault("OMP_NUM_THREADS", "1")
            with ProcessPoolExecutor(workers) as pool:
                rows = pool.map(_drive, jobs, chunksize=1)
                for row in rows:
                    _append(sink, row, done, bar)
        else:
            for job in jobs:
                _append(sink, _drive(job), done, bar)
    if record is not None:
        index_onpolicy(record)
    return [done[d.key] for d in drives]


def _append(sink, row: dict, done: dict, bar) -> None:
    sink.write(json.dumps(row) + "\n")
    sink.flush()
    done[row["key"]] = row
    bar.update(1)


def _read_rows(path: Path) -> dict[str, dict]:
    """The rows of a drives file by key; a torn last line (an interrupted run) is dropped."""
    rows: dict[str, dict] = {}
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[row["key"]] = row
    return rows


def write_report(
    rows: list[dict],
    routes: Sequence[RouteSpec],
    agents: Sequence[str],
    checkpoint: str,
    out: Path,
    image_size: tuple[int, int],
) -> dict:
    """``results.json`` and ``report.md`` from the rows, a map of the first route of each track
    (every agent, seed run 0) and a video of the farthest drive (seed run 0) of the first agent
    that sees."""
    summary = summarize(rows)
    first: dict[str | None, RouteSpec] = {}
    for spec in routes:
        first.setdefault(track_of(build_route(spec).length), spec)
    maps = []
    for spec in first.values():
        name = f"map_{spec.route_id}.png"
        drives = [r for r in rows if r["route_id"] == spec.route_id and r["seed_run"] == 0]
        draw_map(build_route(spec), drives, out / name)
        maps.append(name)
    video_path = None
    seeing = [a for a in agents if a in MODEL_AGENTS]
    driven = [r for r in rows if r["agent"] == (seeing or [""])[0] and r["seed_run"] == 0]
    if driven:  # the drive that got farthest, shortest first among equals: the most to see
        best = max(driven, key=lambda r: (r["rc"], -r["frames"]))
        spec = next(s for s in routes if s.route_id == best["route_id"])
        agent = make_agent(seeing[0], checkpoint)
        frames: list[np.ndarray] = []
        drive_route(build_route(spec), agent, image_size, _recorder(frames, agent, spec.route_id))
        video_path = out / f"video_{spec.route_id}_{seeing[0]}.mp4"
        write_video(frames, video_path)
    fps = _speed(rows)
    driven_agents = {r["agent"] for r in rows}
    paired = {
        a: paired_difference(rows, a, "lane_keeping")
        for a in seeing
        if a in driven_agents and "lane_keeping" in driven_agents
    }
    results_json = {
        "summary": summary,
        "over_lane_keeping_same_drives": paired,
        "speed": fps,
        "maps": maps,
        "video": video_path.name if video_path else None,
    }
    write_bytes(out / "results.json", (json.dumps(results_json, indent=1) + "\n").encode())
    text = [
        "# Closed-loop driving in the procedural world",
        "",
        f"Checkpoint `{checkpoint}`; agents {', '.join(agents)}. Scored with the CARLA "
        "leaderboard 1.0 rules (DS = RC x IS, in percent; IS in [0, 1]).",
        "",
        table_markdown(summary),
        "",
        "## Infractions and route ends",
        "",
        infractions_markdown(summary),
        "",
        *(
            ["## Against lane keeping on the same drives", "", paired_markdown(paired), ""]
            if paired
            else []
        ),
        "## Speed",
        "",
        json.dumps(fps),
        "",
        "## Maps",
        "",
        *[f"![{m}]({m})" for m in maps],
        "",
        f"Video: `{video_path.name}`" if video_path else "",
    ]
    write_bytes(out / "report.md", "\n".join(text).encode())
    return results_json


def _recorder(frames: list, agent, route_id: str):
    def on_frame(frame, images, state):
        caption = (
            f"{route_id} t={state.t:5.1f}s v={state.ego[3]:4.1f}m/s | {agent.driver.instruction}"
        )
        frames.append(video_frame(images, agent.driver.model.config.views, caption))

    return on_frame


def _speed(rows: list[dict]) -> dict:
    """Closed-loop frames per second (render + act + physics) and act() latency of the agents
    that see, from the drives' own timings."""
    out = {}
    for agent in sorted({r["agent"] for r in rows}):
        rs = [r for r in rows if r["agent"] == agent]
        frames, seconds = sum(r["frames"] for r in rs), sum(r["loop_s"] for r in rs)
        out[agent] = {
            "fps": frames / seconds if seconds else None,
            "act_ms_median": float(np.median([r["act_ms_median"] for r in rs])),
            "frames": frames,
        }
    return out
