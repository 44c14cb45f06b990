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

A hold keeps the speed the car has (the driver not noticing what is ahead) until stopping in the
room left would take more than :data:`HOLD_RELEASE_DECEL`, when the expert takes over: the planner
sees the car too fast for a red light or a queue close ahead, and the hard brake that still stops
it (DART's point for speed; the expert's own approaches slow down early and never show it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from driving.control import Control
from scenes.procedural.expert import steady_throttle

GAP_FRAMES = (25, 55)  # frames from one perturbation's end to the next one's start
STEER_FRAMES, STEER_PEAK = (6, 12), (0.25, 0.5)  # 0.6-1.2 s triangular impulse, |steer| at its peak
BRAKE_FRAMES = (4, 7)  # 0.4-0.7 s of full brake, as a PID that finds itself too fast gives
HOLD_FRAMES = (15, 30)  # 1.5-3 s holding the speed, unless released earlier
BRAKE_SHARE, HOLD_SHARE = 0.2, 0.35  # of the perturbations; the rest steer
HOLD_RELEASE_DECEL, HOLD_RELEASE_MARGIN = 4.0, 2.0  # m/s², m: when the expert takes a hold back


@dataclass(frozen=True)
class Perturbation:
    """Frames ``[start, start + frames)`` of a drive steer ``steer`` at the impulse's peak (a
    triangle over the span) instead of the expert's steering, or get full brake and no throttle
    when ``brake``, or hold the speed (the throttle that keeps it, no brake) when ``hold``."""

    start: int
    frames: int
    steer: float = 0.0
    brake: bool = False
    hold: bool = False

    def covers(self, frame: int) -> bool:
        return self.start <= frame < self.start + self.frames

    def apply(self, control: Control, t: float, speed: float = 0.0) -> Control:
        """``control`` perturbed at drive time ``t`` (frames, fractional between recorded
        frames) for a car at ``speed`` m/s; unchanged outside the span."""
        phase = (t - self.start) / self.frames
        if not 0.0 <= phase < 1.0:
            return control
        if self.brake:
            return Control(throttle=0.0, brake=1.0, steer=control.steer)
        if self.hold:
            return Control(throttle=steady_throttle(speed), brake=0.0, steer=control.steer)
        triangle = 1.0 - abs(2.0 * phase - 1.0)
        return Control(control.throttle, control.brake, self.steer * triangle)


def hold_released(speed: float, room: float) -> bool:
    """Whether a hold at ``speed`` m/s with ``room`` metres before the expert must stop (a red
    light's stop line, a car ahead) ends now: stopping in what is left takes
    :data:`HOLD_RELEASE_DECEL`, with :data:`HOLD_RELEASE_MARGIN` to spare."""
    return room <= speed * speed / (2.0 * HOLD_RELEASE_DECEL) + HOLD_RELEASE_MARGIN


def plan_perturbations(
    rng: np.random.Generator, frames: int, first: int = 20
) -> list[Perturbation]:
    """Perturbations over a drive of ``frames`` frames, the first at or after frame ``first``,
    separated by :data:`GAP_FRAMES`; a share :data:`BRAKE_SHARE` are hard brakes,
    :data:`HOLD_SHARE` speed holds, the rest steering impulses to either side."""
    out: list[Perturbation] = []
    start = first + int(rng.integers(0, GAP_FRAMES[0]))
    while True:
        kind = rng.random()
        if kind < BRAKE_SHARE:
            p = Perturbation(
                start, int(rng.integers(BRAKE_FRAMES[0], BRAKE_FRAMES[1] + 1)), brake=True
            )
        elif kind < BRAKE_SHARE + HOLD_SHARE:
            p = Perturbation(
                start, int(rng.integers(HOLD_FRAMES[0], HOLD_FRAMES[1] + 1)), hold=True
            )
        else:
            peak = float(rng.uniform(*STEER_PEAK)) * (1.0 if rng.random() < 0.5 else -1.0)
            p = Perturbation(start, int(rng.integers(STEER_FRAMES[0], STEER_FRAMES[1] + 1)), peak)
        if p.start + p.frames > frames:
            return out
        out.append(p)
        start = p.start + p.frames + int(rng.integers(GAP_FRAMES[0], GAP_FRAMES[1] + 1))
