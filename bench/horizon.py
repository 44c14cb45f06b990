"""Long-horizon generation on held-out towns: does the model beat doing nothing, at every horizon?

Rollouts of ``--horizon`` (128) frames from ``--windows`` (48) windows of held-out procedural drives
(town seeds from 951, weathers cycled, each window told the drive's own instruction at its frame).
Per horizon window (frames 1-8, 9-16, 17-24, 25-32, 57-64, 121-128) FD-drive (the evaluator encoder,
``checkpoints/evaluator``) against the recorded frames of the same windows, with a bootstrap 95 %
interval over the windows (paired, bias-corrected: :func:`qa.uncertainty.bootstrap_ci`), for:

* ``model``: the checkpoint's rollouts, with its own sampler (or ``--sampler``);
* ``repeat_last``: the last seed frame held still;
* ``warp_only``: the last seed frame moved by the model's own plan, no diffusion
  (:func:`lmgendrive.ego_warp.warp_only`: one re-projection of the clean frame per future frame);
* ``untrained``: the same preset freshly initialised (init seed 0), same sampler;
* ``vae_reconstruction``: the recorded frames themselves through the model's VAE (encode, decode):
  the best any frame the diffusion draws can score. ``sampler.context_detail`` adds back the detail
  the VAE lost from the context frame, which lets short horizons score below it; new content
  cannot. ``--ceiling`` measures only this row and repeat-last (no rollouts; the bootstraps
  dominate its time): where the VAE's own reconstructions lose to repeating the last frame, no
  generator in its latent space can win without carrying real detail forward.

Turns, on the video: at junction entries of held-out towns every feasible maneuver is asked for
in turn (``bench/quality.py``'s cases) and rolled out ``--turn-horizon`` (32) frames. The heading
change seen in the front view (:func:`qa.motion.video_yaw`) over the first h frames classifies the
video as left / straight / right (``qa.motion.TURN_DEG``): ``video_adherence`` is the share that
does what was asked, ``plan_adherence`` the same for the plan; ``agreement`` is the share whose
video does what its own plan does (over the turn cases and the long windows that reach h). Wilson
intervals.

Stops: ``--stop-windows`` of the long windows are told "Stop now and wait." instead.
``stop_video_motion`` is the front view's mean optical flow (pixels per frame, Farneback) over the
frames after the plan has come to rest (planned speed below 0.5 m/s), beside the same measure on
recorded stops of the held-out drives (the expert standing still). FD-drive of the stop rollouts at
57-64 and 121-128 is given beside repeat-last of the same windows.

Writes ``--figure`` (docs/horizon.png: the curves with their intervals) and ``--sheet``
(docs/horizon_sheet.png: 128-frame rollouts at t+8, 32, 64 and 128 for three instructions at one
junction, and the recorded drive). The last line printed is one JSON object.

    python bench/horizon.py [--checkpoint demo] [--windows 48] [--horizon 128]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import (  # noqa: E402  (bench/ scripts share their helpers)
    CONTEXT,
    HELD_OUT_FIRST,
    _label,
    frames_of,
    held_out_scenes,
    junction_windows,
    turn_cases,
)

from lmgendrive.checkpoint import build_untrained, load_checkpoint  # noqa: E402
from lmgendrive.device import pick_device  # noqa: E402
from lmgendrive.ego_warp import warp_only  # noqa: E402
from lmgendrive.frames import to_uint8  # noqa: E402
from lmgendrive.model import LMGenDrive  # noqa: E402
from lmgendrive.rollout import RolloutResult  # noqa: E402
from qa.drive import load_drive  # noqa: E402
from qa.frechet import FeatureStats, frechet_distance  # noqa: E402
from qa.motion import TURN_DEG, trajectory, video_yaw  # noqa: E402
from qa.uncertainty import bootstrap_ci, wilson  # noqa: E402
from scenes.sheet import write_png  # noqa: E402
from schemas.sampler import SamplerConfig, SamplerOverride  # noqa: E402

WINDOWS = ((1, 8), (9, 16), (17, 24), (25, 32), (57, 64), (121, 128))
STOP_TEXT = "Stop now and wait."
STILL_MPS = 0.5  # planned speed below this: the plan has stopped


@dataclass(frozen=True)
class Start:
    scene: object  # ProceduralScene
    t: int  # the last seed frame
    text: str


def start_state_args(starts: list[Start], step: int) -> dict:
    """``LMGenDrive.rollout`` inputs for seeds ending at each start's frame, as the generation
    worker gives them: ``CONTEXT`` frames, the speed there and the path driven over the last
    step."""
    return {
        "seed_frames": np.stack([frames_of(s.scene, s.t - CONTEXT + 1, s.t) for s in starts]),
        "instructions": [s.text for s in starts],
        "speed": np.array([s.scene.measurements(s.t).speed for s in starts], np.float32),
        "driven": np.stack(
            [np.asarray(s.scene.measurements(s.t - step).waypoints, np.float32) for s in starts]
        ),
    }


def rollouts(
    model: LMGenDrive, starts: list[Start], horizon: int, sampler: SamplerConfig, batch: int
) -> RolloutResult:
    """Rollouts of every start, ``batch`` at a time; sample i uses seed i."""
    parts = []
    for k in range(0, len(starts), batch):
        chunk = starts[k : k + batch]
        parts.append(
            model.rollout(
                **start_state_args(chunk, model.config.frames_per_step),
                horizon=horizon,
                seeds=list(range(k, k + len(chunk))),
                sampler=sampler,
            )
        )
        print(f"  {k + len(chunk)}/{len(starts)} rollouts", file=sys.stderr, flush=True)
    return RolloutResult(
        *(
            np.concatenate([getattr(p, f) for p in parts])
            for f in RolloutResult.__dataclass_fields__
        )
    )


def warp_baseline(model: LMGenDrive, starts: list[Start], waypoints: np.ndarray) -> np.ndarray:
    """uint8 (N, V, S*F, H, W, 3): each start's last seed frame moved by the model's plan."""
    cfg = model.config
    last = model.pixels(np.stack([frames_of(s.scene, s.t, s.t)[:, 0] for s in starts]), "seed")
    with torch.no_grad():
        moved = warp_only(
            last,
            torch.as_tensor(waypoints, device=last.device),
            cfg.frames_per_step,
            cfg.fps,
            cfg.views,
        )
    return to_uint8(moved.clamp(-1.0, 1.0))


def vae_reconstruction(model: LMGenDrive, videos: np.ndarray, batch: int = 256) -> np.ndarray:
    """uint8 ``videos`` (N, V, T, H, W, 3) through the model's VAE (posterior mode, decoded)."""
    pixels = model.pixels(videos, "recorded").flatten(0, 2)
    g = model.generator
    decoded = torch.cat(
        [g.decode(g.encode(pixels[k : k + batch])) for k in range(0, len(pixels), batch)]
    )
    return to_uint8(decoded.unflatten(0, videos.shape[:3]))


def window_features(extract, videos: np.ndarray, first: int, last: int) -> np.ndarray:
    """(N, T*1, D) features of frames ``first..last`` (1-based) of (N, V, T, H, W, 3) videos, one
    multi-view sample per frame."""
    clip = videos[:, :, first - 1 : last]
    n, v, t = clip.shape[:3]
    frames = clip.transpose(0, 2, 1, 3, 4, 5).reshape(n * t, v, *clip.shape[3:])
    return extract(frames).reshape(n, t, -1)


def fd_with_ci(
    real: np.ndarray, fake: np.ndarray, rng: np.random.Generator, replicates: int
) -> dict:
    """FD-drive of per-window features (N, T, D) with a bootstrap 95 % interval over windows."""
    r = [FeatureStats.of(x) for x in real]
    g = [FeatureStats.of(x) for x in fake]
    value = frechet_distance(FeatureStats.of(real.reshape(-1, real.shape[-1])), _all(fake))
    lo, hi = bootstrap_ci(r, g, value, replicates, rng)
    return {"fd": round(value, 3), "ci95": [round(lo, 3), round(hi, 3)]}


def horizon_fd(
    extract,
    model: LMGenDrive,
    real: np.ndarray,
    videos: dict[str, np.ndarray],
    windows: list[tuple[int, int]],
    rng: np.random.Generator,
    replicates: int,
) -> dict:
    """{method: {"first-last": FD-drive with its interval}} of every video against ``real``, plus
    ``vae_reconstruction``: the recorded frames themselves through the model's VAE."""
    fd: dict = {m: {} for m in [*videos, "vae_reconstruction"]}
    for first, last in windows:
        r = window_features(extract, real, first, last)
        for method, video in videos.items():
            fd[method][f"{first}-{last}"] = fd_with_ci(
                r, window_features(extract, video, first, last), rng, replicates
            )
        decoded = vae_reconstruction(model, real[:, :, first - 1 : last])
        fd["vae_reconstruction"][f"{first}-{last}"] = fd_with_ci(
            r, window_features(extract, decoded, 1, last - first + 1), rng, replicates
        )
    return fd


def ceiling_result(args, extract, model, real, repeat, windows, rng, started: float) -> dict:
    """``--ceiling``: no rollouts, only the two figures that bound any generator of this latent
    space against doing nothing. ``vae_reconstruction_over_repeat_last`` above 1 at a horizon
    means that no frame drawn in the latent space (new content, not detail carried from the
    context) can beat repeating the last frame there, however good the UNet."""
    fd = horizon_fd(extract, model, real, {"repeat_last": repeat}, windows, rng, args.bootstrap)
    return {
        "checkpoint": str(args.checkpoint),
        "windows": len(real),
        "horizon": args.horizon,
        "fd_drive": fd,
        "vae_reconstruction_over_repeat_last": {
            k: round(fd["vae_reconstruction"][k]["fd"] / fd["repeat_last"][k]["fd"], 4)
            for k in fd["repeat_last"]
        },
        "seconds": round(time.perf_counter() - started, 1),
    }


def _all(x: np.ndarray) -> FeatureStats:
    return FeatureStats.of(x.reshape(-1, x.shape[-1]))


def classify(heading_deg: float) -> str:
    if abs(heading_deg) < TURN_DEG:
        return "straight"
    return "left" if heading_deg > 0 else "right"


def video_heading(front: np.ndarray, seed_last: np.ndarray, step: int) -> np.ndarray:
    """Cumulative heading change (degrees, left positive) after each step, seen in the front view
    (T, H, W, 3) that follows ``seed_last``."""
    yaw = video_yaw(np.concatenate([seed_last[None], front]), step)
    return np.degrees(np.cumsum(yaw))


def plan_heading(waypoints: np.ndarray) -> np.ndarray:
    """Cumulative planned heading change (degrees) after each step of (S, K, 2) waypoints."""
    return np.array([trajectory(waypoints[: k + 1]).heading_deg for k in range(len(waypoints))])


def share(hits: list[bool]) -> dict:
    if not hits:
        return {"share": None, "n": 0}
    lo, hi = wilson(int(sum(hits)), len(hits))
    return {
        "share": round(float(np.mean(hits)), 4),
        "n": len(hits),
        "ci95": [round(lo, 3), round(hi, 3)],
    }


def flow_motion(front: np.ndarray) -> float:
    """Mean optical-flow magnitude (pixels per frame) over consecutive frames (T, H, W, 3)."""
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in front]
    mags = [
        np.linalg.norm(
            cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 2, 9, 3, 5, 1.1, 0), axis=-1
        ).mean()
        for a, b in zip(gray[:-1], gray[1:], strict=True)
    ]
    return float(np.mean(mags)) if mags else float("nan")


def recorded_stops(scenes: list, span: int = 16) -> list[np.ndarray]:
    """Front-view clips of ``span`` frames where the expert stands still throughout."""
    clips = []
    for s in scenes:
        t = 0
        while t + span <= len(s):
            if all(s.measurements(i).speed < 0.05 for i in range(t, t + span)):
                clips.append(np.stack([s.images(i)["front"] for i in range(t, t + span)]))
                t += span
            else:
                t += 4
    return clips


def contact_sheet(model, case_scene, t: int, options, sampler, horizon: int, path: Path) -> None:
    """Rollouts for each instruction at one junction (rows), columns seed, t+8, 32, 64, 128."""
    from scenes.procedural.instructions import make_instruction
    from schemas.scene import TYPE_ASKING_FOR

    texts = [make_instruction(TYPE_ASKING_FOR[m], np.random.default_rng(0)).text for m in options]
    starts = [Start(case_scene, t, text) for text in texts]
    result = rollouts(model, starts, horizon, sampler, len(starts))
    at = [h for h in (8, 32, 64, 128) if h <= horizon]
    size = model.config.image_size[0]
    width = 3 * size
    seed = np.concatenate(list(frames_of(case_scene, t, t)[:, 0]), axis=1)

    def strip(tiles):
        return np.concatenate(
            [cv2.resize(x, (width, size), interpolation=cv2.INTER_AREA) for x in tiles], axis=1
        )

    rows = [
        _label(
            f"{case_scene.name} frame {t}: seed (left | front | right), then t+"
            + ", t+".join(map(str, at)),
            width * (1 + len(at)),
            header=True,
        )
    ]
    for text, video in zip(texts, result.frames, strict=True):
        rows += [
            _label(f'"{text}"', width * (1 + len(at))),
            strip([seed] + [np.concatenate(list(video[:, h - 1]), axis=1) for h in at]),
        ]
    last = min(len(case_scene) - 1, t + max(at))
    recorded = [
        np.concatenate(list(frames_of(case_scene, min(t + h, last), min(t + h, last))[:, 0]), 1)
        for h in at
    ]
    rows += [
        _label("recorded drive (its own maneuver)", width * (1 + len(at))),
        strip([seed] + recorded),
    ]
    write_png(np.concatenate(rows, axis=0), path)


def figure(fd: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    styles = {
        "model": ("C0", "-", "the model"),
        "repeat_last": ("C3", "--", "repeat the last frame"),
        "warp_only": ("C2", "--", "warp only (last seed frame moved by the plan)"),
        "untrained": ("C7", ":", "untrained model"),
        "vae_reconstruction": (
            "C1",
            ":",
            "recorded frames through the VAE (the decoder's own loss)",
        ),
    }
    for method, rows in fd.items():
        color, ls, label = styles[method]
        ends = [int(k.split("-")[1]) for k in rows]
        values = [rows[k]["fd"] for k in rows]
        lo = [rows[k]["fd"] - rows[k]["ci95"][0] for k in rows]
        hi = [rows[k]["ci95"][1] - rows[k]["fd"] for k in rows]
        ax.errorbar(
            ends,
            values,
            yerr=[lo, hi],
            color=color,
            ls=ls,
            marker="o",
            ms=3,
            capsize=3,
            label=label,
        )
    ax.set_xscale("log", base=2)
    windows = list(next(iter(fd.values())))
    ax.set_xticks([int(k.split("-")[1]) for k in windows], labels=windows)
    ax.set_yscale("log")
    ax.set_xlabel("horizon window (frames after the last seed frame, 10 fps)")
    ax.set_ylabel("FD-drive (lower is better)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="demo")
    parser.add_argument("--evaluator", type=Path, default=Path("checkpoints/evaluator"))
    parser.add_argument("--windows", type=int, default=48, help="long windows (3 per town)")
    parser.add_argument("--horizon", type=int, default=128)
    parser.add_argument("--turn-horizon", type=int, default=32)
    parser.add_argument("--junction-towns", type=int, default=24)
    parser.add_argument("--stop-windows", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument(
        "--sampler", type=json.loads, default={}, help="JSON override of the sampler"
    )
    parser.add_argument("--no-untrained", action="store_true", help="skip the untrained baseline")
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="no rollouts: repeat-last and the VAE's reconstructions only (the latent bound)",
    )
    parser.add_argument("--figure", type=Path, default=Path("docs/horizon.png"))
    parser.add_argument("--sheet", type=Path, default=Path("docs/horizon_sheet.png"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_grad_enabled(False)
    started = time.perf_counter()
    device = pick_device()
    model, identity = load_checkpoint(args.checkpoint, device)
    cfg = model.config
    step, size = cfg.frames_per_step, cfg.image_size[0]
    sampler = SamplerOverride(**args.sampler).over(cfg.sampler, "--sampler")
    horizon = args.horizon
    windows = [w for w in WINDOWS if w[1] <= horizon]
    front = list(cfg.views).index("front")
    rng = np.random.default_rng(0)

    # long windows: 3 per town at frames 7, 59, 111 of 240-frame drives
    per_town = 3
    towns = math.ceil(args.windows / per_town)
    scenes = held_out_scenes(towns, CONTEXT + 112 + horizon, size)
    firsts = [step + CONTEXT - 1 + 52 * k for k in range(per_town)]
    starts = [Start(s, t, s.measurements(t).instruction.text) for s in scenes for t in firsts][
        : args.windows
    ]
    real = np.stack([frames_of(s.scene, s.t + 1, s.t + horizon) for s in starts])
    repeat = np.repeat(np.stack([frames_of(s.scene, s.t, s.t) for s in starts]), horizon, axis=2)
    extract = load_drive(args.evaluator, device)
    if args.ceiling:
        print(json.dumps(ceiling_result(args, extract, model, real, repeat, windows, rng, started)))
        return
    print(f"{len(starts)} long windows: model rollouts", file=sys.stderr)
    ours = rollouts(model, starts, horizon, sampler, args.batch)
    videos = {
        "model": ours.frames,
        "repeat_last": repeat,
        "warp_only": warp_baseline(model, starts, ours.waypoints),
    }
    if not args.no_untrained:
        print("untrained rollouts", file=sys.stderr)
        untrained = build_untrained(cfg.preset, seed=0).to(device)
        videos["untrained"] = rollouts(untrained, starts, horizon, sampler, args.batch).frames
        del untrained

    fd = horizon_fd(extract, model, real, videos, windows, rng, args.bootstrap)
    keys = [f"{a}-{b}" for a, b in windows]

    def ratio(other: str) -> dict:
        return {k: round(fd["model"][k]["fd"] / fd[other][k]["fd"], 4) for k in keys}

    # turns at junctions, on the video
    junctions = junction_windows(held_out_scenes(args.junction_towns, 200, size), step)
    cases = [
        (w, m, text)
        for w, m, text in turn_cases(junctions)
        if w.t + args.turn_horizon < len(w.scene)
    ]
    print(f"{len(cases)} junction cases", file=sys.stderr)
    turns = rollouts(
        model,
        [Start(w.scene, w.t, text) for w, _, text in cases],
        args.turn_horizon,
        sampler,
        args.batch,
    )
    hs = [h for h in (8, 16, 32, 64, 128) if h <= horizon]
    video_hits: dict[int, list[bool]] = {h: [] for h in hs if h <= args.turn_horizon}
    plan_hits: dict[int, list[bool]] = {h: [] for h in video_hits}
    agree: dict[int, list[bool]] = {h: [] for h in hs}
    for (w, asked, _), video, wp in zip(cases, turns.frames, turns.waypoints, strict=True):
        seen = video_heading(video[front], frames_of(w.scene, w.t, w.t)[front, 0], step)
        planned = plan_heading(wp)
        for h in video_hits:
            k = h // step - 1
            video_hits[h].append(classify(seen[k]) == asked)
            plan_hits[h].append(classify(planned[k]) == asked)
            agree[h].append(classify(seen[k]) == classify(planned[k]))
    for s, video, wp in zip(starts, ours.frames, ours.waypoints, strict=True):
        seen = video_heading(video[front], frames_of(s.scene, s.t, s.t)[front, 0], step)
        planned = plan_heading(wp)
        for h in hs:
            agree[h].append(classify(seen[h // step - 1]) == classify(planned[h // step - 1]))

    # stops
    stop_starts = [
        Start(s.scene, s.t, STOP_TEXT) for s in starts if s.scene.measurements(s.t).speed > 2.0
    ][: args.stop_windows]
    stops = rollouts(model, stop_starts, horizon, sampler, args.batch)
    motions = []
    for video, wp in zip(stops.frames, stops.waypoints, strict=True):
        speed = np.linalg.norm(wp[:, -1] - wp[:, -2], axis=-1) / 0.2
        still = np.flatnonzero(speed < STILL_MPS)
        if len(still):
            motions.append(flow_motion(video[front, still[0] * step :]))
    recorded = [flow_motion(c) for c in recorded_stops(scenes)]
    stop_real = np.stack([frames_of(s.scene, s.t + 1, s.t + horizon) for s in stop_starts])
    stop_repeat = np.repeat(
        np.stack([frames_of(s.scene, s.t, s.t) for s in stop_starts]), horizon, 2
    )
    stop_fd = {}
    for first, last in [w for w in windows if w[1] in (64, 128)]:
        r = window_features(extract, stop_real, first, last)
        stop_fd[f"{first}-{last}"] = {
            "stopped_rollouts": fd_with_ci(
                r, window_features(extract, stops.frames, first, last), rng, args.bootstrap
            ),
            "repeat_last": fd_with_ci(
                r, window_features(extract, stop_repeat, first, last), rng, args.bootstrap
            ),
        }

    title = (
        f"{identity.model_id}: FD-drive per horizon window (frames after the seed)\n"
        f"{len(starts)} held-out windows, 95 % bootstrap intervals"
    )
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    figure(fd, args.figure, title)
    # The junction offering the most maneuvers (the first of those): the recorded row is cut at
    # the drive's end when the drive is shorter than the horizon.
    sheet_case = max(junctions, key=lambda w: len(w.scene.junction_ahead(w.t, within=0.0) or []))
    contact_sheet(
        model,
        sheet_case.scene,
        sheet_case.t,
        list(sheet_case.scene.junction_ahead(sheet_case.t, within=0.0)),
        sampler,
        horizon,
        args.sheet,
    )

    result = {
        "checkpoint": str(args.checkpoint),
        "model_id": identity.model_id,
        "sampler": sampler.model_dump(),
        "device": str(device),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "held_out_towns": [HELD_OUT_FIRST, HELD_OUT_FIRST + max(towns, args.junction_towns) - 1],
        "windows": len(starts),
        "horizon": horizon,
        "fd_drive": fd,
        "fd_over_repeat_last": ratio("repeat_last"),
        "fd_over_warp_only": ratio("warp_only"),
        "fd_over_untrained": ratio("untrained") if "untrained" in fd else None,
        "fd_over_vae_reconstruction": ratio("vae_reconstruction"),
        f"fd{windows[-1][1]}_over_fd8": round(
            fd["model"][keys[-1]]["fd"] / fd["model"][keys[0]]["fd"], 4
        ),
        "turn_cases": len(cases),
        "video_adherence": {h: share(v) for h, v in video_hits.items()},
        "plan_adherence": {h: share(v) for h, v in plan_hits.items()},
        "video_adherence_32": share(video_hits.get(32, []))["share"],
        "agreement": {h: share(v) for h, v in agree.items()},
        "worst_agreement": min(share(v)["share"] for v in agree.values()),
        "worst_fd_over_repeat_last": max(ratio("repeat_last").values()),
        "worst_fd_over_warp_only": max(ratio("warp_only").values()),
        "stop_windows": len(stop_starts),
        "stop_video_motion": {
            "generated_px_per_frame": round(float(np.mean(motions)), 3) if motions else None,
            "stopped_plans": len(motions),
            "recorded_px_per_frame": round(float(np.mean(recorded)), 3) if recorded else None,
            "recorded_clips": len(recorded),
        },
        "stop_fd_drive": stop_fd,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
