"""Relit drives: the expert's drive with the traffic lights drawn in states it did not drive by, so
that frames show the car standing at its stop line under a green light, or rolling up to it under
red, and the measurements' light state is the drawn one.

The expert stands at a red light and leaves soon after it turns green, so its frames near a stop
line are mostly red, and those of the car standing at the line almost all are: a classifier of the
light learns that a car at the line is at a red light, and reads red where the green lamp is plain
(the light reader at a foggy light, README's closed-loop section). Drawing the same frames with
other lamp states (counterfactual data augmentation: Kaushik et al. 2020, "Learning the difference
that makes a difference with counterfactually-augmented data") leaves the lamp as the only cue.

For every second of the drive (:data:`SEGMENT_FRAMES`) the governing light's drawn state is drawn
uniformly from red, yellow and green, and every signal head of the town is drawn as it is at a time
when the governing one shows that state, so the heads of one junction stay consistent.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from driving.vehicle import HALF_LENGTH
from scenes.procedural.routes import Route
from scenes.procedural.signals import cycle_length, light_state
from scenes.procedural.town import Town
from scenes.procedural.world import FrameState

SEGMENT_FRAMES = 10  # 1 s at 10 Hz: the drawn state holds this long
DRAWN_STATES = ("red", "yellow", "green")
PHASE_STEP = 0.1  # s: the grid of cycle times a drawn time is picked from


def drawn_time(town: Town, route: Route, frame: FrameState, state: str, u: float) -> float:
    """A time whose signal states show ``state`` on the light governing ``frame``'s ego (the
    fraction ``u`` in [0, 1) into the cycle's times that do), ``frame.t`` where no light governs
    it."""
    m = route.next_maneuver(frame.ego_s + HALF_LENGTH)
    if m is None or not town.has_light(m.node):
        return frame.t
    times = frame.t + np.arange(0.0, cycle_length(len(town.arms(m.node))), PHASE_STEP)
    showing = [t for t in times if light_state(town, m.node, m.k_in, float(t)) == state]
    return float(showing[int(u * len(showing))])


def relight(
    town: Town, route: Route, frames: list[FrameState], rng: np.random.Generator
) -> list[FrameState]:
    """``frames`` with every signal head drawn at a time (:attr:`FrameState.light_t`) whose
    governing light shows a state drawn for each :data:`SEGMENT_FRAMES` frames."""
    heads = town.light_heads()
    segments = -(-len(frames) // SEGMENT_FRAMES)
    states = rng.choice(DRAWN_STATES, segments)
    fractions = rng.uniform(0.0, 1.0, segments)
    relit = []
    for i, f in enumerate(frames):
        j = i // SEGMENT_FRAMES
        t = drawn_time(town, route, f, str(states[j]), float(fractions[j]))
        lights = [light_state(town, node, k, t) for node, k, _ in heads]
        relit.append(replace(f, lights=lights, light_t=t))
    return relit
