"""Displaced-camera drives: the expert's drive seen from a camera moved across its lane and
turned, so that frames show a car off its lane centre with the lane pose known.

The expert keeps to the lane centre, so its frames never show the lateral offsets and heading
errors a learnt driver's own drives do, and nothing trained on them learns to tell where the car
stands in its lane (``bench/lane_probe.py``). Moving the camera instead of the car is the
synthetic-viewpoint augmentation of end-to-end driving (Bojarski et al. 2016, "End to end learning
for self-driving cars"; ChauffeurNet's perturbations, Bansal et al. 2018): the world is the
expert's, drawn from where the car is not. The offsets follow a slow random walk, linear between
knots drawn every :data:`KNOT_FRAMES` frames, so that consecutive frames form a plausible drive.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from scenes.procedural.geometry import Polyline
from scenes.procedural.world import FrameState

# the largest move across the lane, and turn: past what the model's own drives show on straight
# road (1.5 m, 15 degrees), to what they show leaving a junction after a turn taken too wide
SHIFT_M, TURN_DEG = 2.0, 30.0
KNOT_FRAMES = 10  # 1 s at 10 Hz between the random walk's knots


def displace(frame: FrameState, path: Polyline, shift: float, turn: float) -> FrameState:
    """``frame`` with the ego moved ``shift`` metres left across ``path`` (its heading at the
    ego's arc length) and turned ``turn`` radians left."""
    x, y, theta = (float(v) for v in frame.ego[:3])
    h = path.heading(frame.ego_s)
    ego = frame.ego.copy()
    ego[:3] = (x - shift * np.sin(h), y + shift * np.cos(h), theta + turn)
    return replace(frame, ego=ego)


def displacements(rng: np.random.Generator, frames: int) -> np.ndarray:
    """(frames, 2) shift (metres) and turn (radians) per frame: linear between knots every
    :data:`KNOT_FRAMES` frames, each uniform within :data:`SHIFT_M` and :data:`TURN_DEG`."""
    knots = np.arange(0, frames + KNOT_FRAMES, KNOT_FRAMES)
    shift = rng.uniform(-SHIFT_M, SHIFT_M, len(knots))
    turn = np.radians(rng.uniform(-TURN_DEG, TURN_DEG, len(knots)))
    t = np.arange(frames)
    return np.stack([np.interp(t, knots, shift), np.interp(t, knots, turn)], axis=1)
