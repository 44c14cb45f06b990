"""Can the planner tell where the car is in its lane? Ridge probes for the ego's lateral offset
from its lane centre and its heading error, fitted on frozen tokens of frames of training towns,
scored on held-out towns.

In closed loop the model's car drifts off its lane centre on straight road while its plan says
"straight ahead", and the drift ends in early turns and loops (README, closed-loop section). A
planner can only steer back from what its tokens carry. The frames are the expert's drives drawn
from a displaced camera: every 4th frame outside junction boxes, rendered with the car moved
up to 1.5 m across its lane and turned up to 15 degrees (uniform, seeded), which is what the
model's own drives show (the expert's own frames are all on the centre line). Readers, on the same
frames:

* ``pixels_cnn``: a small CNN trained on the fit frames' front views (the positive control:
  what a network reads from these 64-px images with this little data);
* ``pixels``: the front view itself, linearly (a baseline);
* ``<checkpoint>.encoder``: the vision encoder's Q-Former input of the frame (pooled BEV,
  waypoint and light tokens: everything the planner's tokens are made from);
* ``<checkpoint>.planner``: the per-frame tokens the LLM reads (Q-Former and adapter output);
* ``<checkpoint>.lane_reader``: the vision encoder's lane reader, where it has one, read as it
  is (no fit): what ``lmgd drive``'s ``model_lane_assist`` agent steers by.

R² on held-out frames (1 - squared error / variance; 0 is the mean's, below 0 worse), with a
bootstrap 95 % interval over held-out drives, and the root-mean-square error (metres, degrees).

The last line is a JSON object: ``lateral_r2`` and ``heading_r2``, each {reader: {r2, rmse,
ci95}}, the labels' spread and the frame and drive counts; for each lane reader ``in_lane``: the
share of held-out frames it sees a lane in, on the lane frames (should be 1) and on frames inside
junction boxes (should be 0), each with its N.

    python bench/lane_probe.py [--checkpoint demo [more ...]] [--train-towns 20]
        [--held-out-towns 8]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from quality import HELD_OUT_FIRST

from closedloop.model_driver import IN_LANE
from lmgendrive.checkpoint import load_checkpoint
from lmgendrive.model import LMGenDrive
from scenes.procedural.displaced import displace
from scenes.procedural.drive import DriveSpec, ProceduralScene, ground_of_town
from scenes.procedural.render import Renderer
from scenes.procedural.world import FrameState
from schemas.scene import WEATHERS

FRAMES, EVERY = 200, 4
SHIFT_M, TURN_DEG = 1.5, 15.0  # the displaced camera: what the model's drives show on straight road
LAMBDAS = (1e1, 1e2, 1e3, 1e4)


def drives(first: int, count: int, size: tuple[int, int]) -> list[ProceduralScene]:
    """The expert's route 0 of ``count`` towns from ``first``, weathers cycled, with the centre
    view (fed to the encoders that see it)."""
    return [
        ProceduralScene(
            DriveSpec(first + k, 0, WEATHERS[k % len(WEATHERS)], FRAMES, size, center_view=True)
        )
        for k in range(count)
    ]


def displaced_frames(
    scenes: list[ProceduralScene], rng: np.random.Generator, junctions: bool = False
) -> tuple[list[tuple[int, FrameState]], np.ndarray]:
    """Every ``EVERY``-th frame of ``scenes`` outside junction boxes (``junctions``: inside
    them), the car moved across its lane and turned at random (uniform, independently per
    frame): (scene index, displaced frame) pairs and their lane pose (N, 2: lateral offset m,
    heading error degrees; left positive)."""
    picked, poses = [], []
    for k, scene in enumerate(scenes):
        town, path = scene.town, scene.log.route.path
        for i in range(0, FRAMES, EVERY):
            f = scene.log.frames[i]
            if town.in_junction_box(float(f.ego[0]), float(f.ego[1])) != junctions:
                continue
            shift = rng.uniform(-SHIFT_M, SHIFT_M)
            moved = displace(f, path, shift, np.radians(rng.uniform(-TURN_DEG, TURN_DEG)))
            lateral, heading = path.lane_pose(f.ego_s, *(float(v) for v in moved.ego[:3]))
            picked.append((k, moved))
            poses.append((lateral, np.degrees(heading)))
    return picked, np.array(poses).reshape(-1, 2)


def readers(
    models: dict[str, LMGenDrive],
    scenes: list[ProceduralScene],
    picked: list[tuple[int, FrameState]],
) -> dict[str, np.ndarray]:
    """Per reader, the features (N, D) of the picked frames; a lane reader's are its outputs
    (N, 3: offset m, heading degrees, in-lane probability)."""
    out: dict[str, list[np.ndarray]] = {"pixels": []}
    for name, model in models.items():
        out[f"{name}.encoder"], out[f"{name}.planner"] = [], []
        if model.vision.lane_reader is not None:
            out[f"{name}.lane_reader"] = []
    for k, scene in enumerate(scenes):
        frames_here = [f for t, f in picked if t == k]
        if not frames_here:
            continue
        renderer = Renderer(
            scene.town,
            ground_of_town(scene.spec.town_seed),
            scene.weather,
            scene.size,
            center=True,
        )
        log = scene.log
        images = [
            renderer.render(f, log.vehicle_colors, log.pedestrian_colors) for f in frames_here
        ]
        front = np.stack([im["front"] for im in images]).astype(np.float32) / 127.5 - 1.0
        out["pixels"].append(front.reshape(len(images), -1))
        for name, model in models.items():
            views = model.config.vision_views
            frames = np.stack([np.stack([im[v] for v in views]) for im in images])
            pixels = model.pixels(frames[:, None], "frames")
            with torch.no_grad():
                tokens = model.vision_tokens(pixels)
                planner = model.compress_history(tokens)
                if model.vision.lane_reader is not None:
                    lane = model.encode_observed(pixels)[2].numpy()
                    lane[:, 1] = np.degrees(lane[:, 1])
                    out[f"{name}.lane_reader"].append(lane)
            out[f"{name}.encoder"].append(tokens[:, 0].flatten(1).float().numpy())
            out[f"{name}.planner"].append(planner[:, 0].flatten(1).float().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def ridge_fit(x: np.ndarray, y: np.ndarray, lam: float):
    """Ridge regression of ``y`` (N, 2) on standardised ``x`` (N, D) in its dual form (N < D
    here): a function from features to predictions. numpy's solve is all it takes; a library
    would add a dependency for six lines."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    a = (x - mu) / sd
    y_mean = y.mean(0)
    alpha = np.linalg.solve(a @ a.T + lam * np.eye(len(a)), y - y_mean)
    w = a.T @ alpha
    return lambda z: ((z - mu) / sd) @ w + y_mean


def cnn_predictions(
    fit: np.ndarray, fit_y: np.ndarray, test: np.ndarray, size: tuple[int, int]
) -> np.ndarray:
    """A small CNN trained on the fit frames' pixels (N, H*W*3) for the lane pose, its
    predictions for ``test``: the positive control, what a network can read from these images
    with this little data."""
    torch.manual_seed(0)
    h, w = size

    def images(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x).view(-1, h, w, 3).permute(0, 3, 1, 2)

    scale = fit_y.std(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 5, 2, 2),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, 2, 1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, 2, 1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(64 * (h // 8) * (w // 8), 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 2),
    )
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=0.01)
    x, y = images(fit), torch.as_tensor(fit_y / scale, dtype=torch.float32)
    for _ in range(1500):
        batch = torch.randint(len(x), (64,))
        loss = torch.nn.functional.mse_loss(net(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return net.eval()(images(test)).numpy() * scale


def pick_lambda(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    """The ridge strength with the least squared error in 4-fold cross-validation over drives."""
    folds = np.array_split(np.unique(groups), 4)
    errors = []
    for lam in LAMBDAS:
        err = 0.0
        for fold in folds:
            test = np.isin(groups, fold)
            predict = ridge_fit(x[~test], y[~test], lam)
            err += float(np.sum(((predict(x[test]) - y[test]) / y.std(0)) ** 2))
        errors.append(err)
    return LAMBDAS[int(np.argmin(errors))]


def r2_with_interval(
    y: np.ndarray, pred: np.ndarray, groups: np.ndarray, rng: np.random.Generator
) -> dict:
    """R² of ``pred`` for ``y`` (N,) with its bootstrap 95 % interval over ``groups`` (drives),
    and the root-mean-square error in ``y``'s unit."""

    def r2(sel: np.ndarray) -> float:
        return 1.0 - float(
            np.sum((y[sel] - pred[sel]) ** 2) / np.sum((y[sel] - y[sel].mean()) ** 2)
        )

    ids = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in ids]
    reps = [
        r2(np.concatenate([members[j] for j in rng.integers(0, len(ids), len(ids))]))
        for _ in range(1000)
    ]
    full = r2(np.arange(len(y)))
    return {
        "r2": round(full, 3),
        "rmse": round(float(np.sqrt(np.mean((y - pred) ** 2))), 3),
        "ci95": [round(float(np.percentile(reps, q)), 3) for q in (2.5, 97.5)],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", nargs="+", default=["demo"])
    p.add_argument("--train-towns", type=int, default=20, help="training towns 1.. for the fit")
    p.add_argument("--held-out-towns", type=int, default=8)
    args = p.parse_args()
    start = time.time()
    torch.manual_seed(0)
    models = {c: load_checkpoint(c)[0] for c in args.checkpoint}
    sizes = {tuple(m.config.image_size) for m in models.values()}
    if len(sizes) != 1:
        raise SystemExit(f"the checkpoints' image sizes differ ({sorted(sizes)}); probe one size")
    size = sizes.pop()
    fit_scenes = drives(1, args.train_towns, size)
    test_scenes = drives(HELD_OUT_FIRST, args.held_out_towns, size)
    rng = np.random.default_rng(0)
    fit_picked, fit_y = displaced_frames(fit_scenes, rng)
    test_picked, test_y = displaced_frames(test_scenes, rng)
    junction_picked, _ = displaced_frames(test_scenes, rng, junctions=True)
    fit_x = readers(models, fit_scenes, fit_picked)
    test_x = readers(models, test_scenes, test_picked)
    fit_groups = np.array([s for s, _ in fit_picked])
    test_groups = np.array([s for s, _ in test_picked])
    result: dict[str, dict] = {"lateral_r2": {}, "heading_r2": {}, "in_lane": {}}
    predictions = {"pixels_cnn": cnn_predictions(fit_x["pixels"], fit_y, test_x["pixels"], size)}
    for name in fit_x:
        if name.endswith(".lane_reader"):  # read as it is
            predictions[name] = test_x[name][:, :2]
            in_junctions = readers(models, test_scenes, junction_picked)[name][:, 2]
            result["in_lane"][name] = {
                "lane_frames": round(float(np.mean(test_x[name][:, 2] >= IN_LANE)), 3),
                "junction_frames": round(float(np.mean(in_junctions >= IN_LANE)), 3),
                "n_lane": len(test_y),
                "n_junction": len(in_junctions),
            }
            continue
        lam = pick_lambda(fit_x[name], fit_y, fit_groups)
        predictions[name] = ridge_fit(fit_x[name], fit_y, lam)(test_x[name])
    for name, pred in predictions.items():
        for j, key in enumerate(("lateral_r2", "heading_r2")):
            result[key][name] = r2_with_interval(test_y[:, j], pred[:, j], test_groups, rng)
        print(f"{name}: lateral {result['lateral_r2'][name]}, heading {result['heading_r2'][name]}")
    spread = {
        "lateral_m_std": round(float(test_y[:, 0].std()), 3),
        "heading_deg_std": round(float(test_y[:, 1].std()), 3),
    }
    print(
        json.dumps(
            {
                "bench": "lane_probe",
                **result,
                **spread,
                "frames_fit": len(fit_y),
                "frames_held_out": len(test_y),
                "drives_held_out": len(test_scenes),
                "checkpoints": args.checkpoint,
                "machine": platform.processor() or platform.machine(),
                "seconds": round(time.time() - start),
            }
        )
    )


if __name__ == "__main__":
    main()
