"""Run every benchmark and write ``bench/results.md``: each figure, its goal, when and where.

Each script runs in its own process (so none inherits another's threads, Ray cluster or caches) and
prints a JSON object as its last line; the figures named in ``GOALS`` are taken from it. The raw
JSON lines are kept in ``bench/results.json``. A script keeps its last result until it runs again,
and both files are written as each script ends.

    python bench/run_all.py [--only render model ...] [--out bench/results.md]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import operator
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from storage.atomic import write_bytes

HERE = Path(__file__).resolve().parent

# script -> (figure path in its JSON, comparison, goal, what it measures)
GOALS: dict[str, list[tuple[str, str, float, str]]] = {
    "render": [("multiview_fps", ">=", 25.0, "procedural renderer, 3 views at 128 px, frames/s")],
    "model": [
        ("demo.plan_over_step", "<=", 0.05, "online plan() / one generation step()"),
        ("demo.hist128_over_hist8", "<=", 1.10, "step() with 128 vs 8 history frames"),
        ("demo.step_ms", "<=", 3000.0, "one generation step (3 views x 8 frames), ms"),
    ],
    "generation": [
        (
            "pipeline_over_bare",
            ">=",
            0.90,
            "full pipeline (Ray, encoding, shards) / bare rollout() loop",
        )
    ],
    "dispatch": [
        ("overhead_ms_per_unit", "<", 5.0, "driver CPU per unit, 256 fake-GPU workers, ms"),
        ("utilization", ">=", 0.95, "worker utilisation, 256 fake-GPU workers"),
    ],
    "planner": [
        (
            "tokens_over_frames",
            "<=",
            0.20,
            "planner batch (48 windows) of cached vision tokens / of pixels",
        )
    ],
    "fid_speed": [
        ("ours_over_pytorch_fid", ">=", 1.0, "FID feature extraction, ours / pytorch-fid, images/s")
    ],
    "quality": [
        ("wp_l1_over_const_vel", "<=", 0.70, "waypoint L1 / constant-velocity extrapolation"),
        (
            "fd_drive_over_repeat_last",
            "<",
            1.0,
            "FD-drive of generated 8 frames / repeat last frame",
        ),
        ("fd_drive_over_untrained", "<", 1.0, "FD-drive / untrained model"),
        ("turn_agreement", ">=", 0.80, "junction maneuvers following the instruction"),
    ],
    "horizon": [
        (
            "worst_fd_over_repeat_last",
            "<",
            1.0,
            "FD-drive / repeat last frame, worst of 1-8..121-128",
        ),
        ("worst_fd_over_warp_only", "<", 1.0, "FD-drive / warp only, worst of 1-8..121-128"),
        ("fd128_over_fd8", "<=", 4.0, "FD-drive of frames 121-128 / of frames 1-8"),
        ("video_adherence_32", ">=", 0.8, "turn instructions the front video follows by t+32"),
        ("worst_agreement", ">=", 0.9, "video turns as its own plan does, worst horizon"),
    ],
    "paper_scale": [
        (
            "pretrained_init_exact",
            ">=",
            1.0,
            "training starts from the pretrained tensors (1 = bit for bit)",
        ),
        (
            "bf16_updated_fraction",
            ">=",
            0.99,
            "weights changed by 10 steps at lr 1e-5, bf16 compute",
        ),
        (
            "load_peak_rss_over_file",
            "<=",
            1.3,
            "peak memory loading a 1.1 GB checkpoint / its size",
        ),
    ],
    "closed_loop": [
        ("min_expert_ds", ">=", 90.0, "closed loop: the expert's DS, worst track (the ceiling)"),
        (
            "min_model_over_lane_keeping",
            ">",
            0.0,
            "closed loop: model DS - lane keeping, worst track",
        ),
        (
            "min_model_over_lane_keeping_same_drives",
            ">",
            0.0,
            "closed loop: model DS - lane keeping on the same routes and seeds, worst track",
        ),
        (
            "min_model_over_random_tiny_short",
            ">",
            0.0,
            "closed loop: model DS - model told random instructions, tiny and short",
        ),
        ("fps", ">=", 10.0, "closed loop with the model (render + plan + physics), frames/s"),
        (
            "min_assisted_over_lane_keeping",
            ">",
            0.0,
            "closed loop: model_assisted (model + its readers) - lane keeping, worst track",
        ),
    ],
}
COMPARE = {">=": operator.ge, "<=": operator.le, "<": operator.lt, ">": operator.gt}
# rows measured before results.json recorded a machine per script
EARLIER_MACHINE = "AMD EPYC, 2 cores, no GPU; Python 3.11.7, torch 2.14.1+cu130"


def figure(result: dict, path: str) -> float:
    value = result
    for part in path.split("."):
        value = value[part]
    return float(value)


# extra arguments: quality.py also redraws the README's contact sheet from the same run;
# closed_loop.py drives the model agents on 4 routes per track (x 3 seeds): a drive that stalls
# runs to the route's timeout, and 50 routes per track would take hours on 2 cores
ARGS: dict[str, list[str]] = {
    "quality": ["--sheet", "docs/futures.png"],
    "closed_loop": ["--model-routes-per-track", "4"],
}


def run(script: str) -> tuple[dict, float]:
    """The last JSON line of ``bench/<script>.py`` and the seconds it took."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(HERE / f"{script}.py"), *ARGS.get(script, [])],
        capture_output=True,
        text=True,
        cwd=HERE.parent,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(
            f"bench/{script}.py failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise SystemExit(f"bench/{script}.py printed no JSON line:\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1]), seconds


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        )
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, {gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def table(
    results: dict[str, dict],
    seconds: dict[str, float],
    measured: dict[str, str],
    machines: dict[str, str],
) -> list[str]:
    names = sorted(set(machines.values()))
    lines = [
        "Machines: " + "; ".join(f"({i + 1}) {m}" for i, m in enumerate(names)) + ".",
        "",
        "| Benchmark | Measured | Figure | Value | Goal | Met | What |",
        "|---|---|---|---:|---|---|---|",
    ]
    for script, goals in GOALS.items():
        if script not in results:
            continue
        for path, op, goal, what in goals:
            try:
                value = figure(results[script], path)
            except KeyError:  # a goal added after the script's last run: its row waits for one
                shown, met = "not measured yet", "-"
            else:
                shown, met = f"{value:g}", "yes" if COMPARE[op](value, goal) else "**no**"
            lines.append(
                f"| `bench/{script}.py` ({seconds[script]:.0f} s) | {measured.get(script, '?')} "
                f"on ({names.index(machines[script]) + 1}) "
                f"| `{path}` | {shown} | {op} {goal:g} | {met} | {what} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", nargs="+", choices=list(GOALS), help="run only these (default: all)"
    )
    parser.add_argument(
        "--rewrite", action="store_true", help="only rewrite the table from the JSON next to it"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    args = parser.parse_args()
    raw_path = args.out.with_suffix(".json")
    # every script's last result is kept until it runs again, and written as each run ends, so
    # that a run stopped half way loses only the script it was in
    previous = json.loads(raw_path.read_text()) if raw_path.is_file() else {}
    results, seconds = dict(previous.get("results", {})), dict(previous.get("seconds", {}))
    measured = dict(previous.get("measured", {}))
    machines = {s: previous.get("machines", {}).get(s, EARLIER_MACHINE) for s in results}
    here = machine()
    text = write_results(args.out, results, seconds, measured, machines)
    for script in [] if args.rewrite else args.only or list(GOALS):
        print(f"bench/{script}.py ...", flush=True)
        results[script], seconds[script] = run(script)
        measured[script] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        machines[script] = here
        print(f"  {json.dumps(results[script])[:300]}", flush=True)
        text = write_results(args.out, results, seconds, measured, machines)
    print(text)


def write_results(
    out: Path,
    results: dict[str, dict],
    seconds: dict[str, float],
    measured: dict[str, str],
    machines: dict[str, str],
) -> str:
    """Write the table to ``out`` and the raw JSON beside it; return the table's text."""
    text = "\n".join(
        [
            "# Benchmark results",
            "",
            "Measured by `python bench/run_all.py`; each row says when (UTC) and on which machine.",
            "",
            "Every ratio is measured side by side in one run of its script; "
            "the scripts' docstrings say how.",
            "",
            *table(results, seconds, measured, machines),
            "",
        ]
    )
    write_bytes(out, text.encode())
    raw = {"results": results, "seconds": seconds, "measured": measured, "machines": machines}
    write_bytes(
        out.with_suffix(".json"), (json.dumps(raw, indent=1, sort_keys=True) + "\n").encode()
    )
    return text


if __name__ == "__main__":
    main()
