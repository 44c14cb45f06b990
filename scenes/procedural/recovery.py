"""Perturbations of the expert's controls, for recovery drives.

A planner trained only on the expert's drives never sees the states its own mistakes lead to (off
the lane centre, heading askew, after a hard brake), and in closed loop it drifts further from
them (covariate shift). The field's remedy is to perturb the expert while recording and let it
recover (Codevilla et al. 2018, "End-to-end driving via conditional imitation learning": triangular
steering impulses; Laskey et al. 2017, DART). A steering impulse replaces the expert's steering for
its span (the driver's hands off the wheel): added to it, the expert's own correction at 20 Hz
cancelled most of it (median heading error 1.5 degrees, the 0.8 s waypoints after it 0.01 m off
straight ahead), too little to show a way back. Training keeps the frames after a perturbation,
whose futures are the expert's recovery, and drops the frames whose futures contain the
perturbation (:func:`lmgendrive.train.data.maneuver_groups`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from driving.control import Control

GAP_FRAMES = (25, 55)  # frames from one perturbation's end to the next one's start
STEER_FRAMES, STEER_PEAK = (6, 12), (0.25, 0.5)  # 0.6-1.2 s triangular impulse, |steer| at its peak
BRAKE_FRAMES = (4, 7)  # 0.4-0.7 s of full brake, as a PID that finds itself too fast gives
BRAKE_SHARE = 0.3  # of the perturbations


@dataclass(frozen=True)
class Perturbation:
    """Frames ``[start, start + frames)`` of a drive steer ``steer`` at the impulse's peak (a
    triangle over the span) instead of the expert's steering, or get full brake and no throttle
    when ``brake``."""

    start: int
    frames: int
    steer: float = 0.0
    brake: bool = False

    def covers(self, frame: int) -> bool:
        return self.start <= frame < self.start + self.frames

    def apply(self, control: Control, t: float) -> Control:
        """``control`` perturbed at drive time ``t`` (frames, fractional between recorded
        frames); unchanged outside the span."""
        phase = (t - self.start) / self.frames
        if not 0.0 <= phase < 1.0:
            return control
        if self.brake:
            return Control(throttle=0.0, brake=1.0, steer=control.steer)
        triangle = 1.0 - abs(2.0 * phase - 1.0)
        return Control(control.throttle, control.brake, self.steer * triangle)


def plan_perturbations(
    rng: np.random.Generator, frames: int, first: int = 20
) -> list[Perturbation]:
    """Perturbations over a drive of ``frames`` frames, the first at or after frame ``first``,
    separated by :data:`GAP_FRAMES`; a share :data:`BRAKE_SHARE` are hard brakes, the rest steering
    impulses to either side."""
    out: list[Perturbation] = []
    start = first + int(rng.integers(0, GAP_FRAMES[0]))
    while True:
        if rng.random() < BRAKE_SHARE:
            p = Perturbation(
                start, int(rng.integers(BRAKE_FRAMES[0], BRAKE_FRAMES[1] + 1)), brake=True
            )
        else:
            peak = float(rng.uniform(*STEER_PEAK)) * (1.0 if rng.random() < 0.5 else -1.0)
            p = Perturbation(start, int(rng.integers(STEER_FRAMES[0], STEER_FRAMES[1] + 1)), peak)
        if p.start + p.frames > frames:
            return out
        out.append(p)
        start = p.start + p.frames + int(rng.integers(GAP_FRAMES[0], GAP_FRAMES[1] + 1))
