"""LangAuto's instructions along a closed-loop route, issued as the car drives (never from the
future): navigation at LMDrive's trigger distances, notices, and misleading instructions.

* Navigation: past one junction, "follow the lane" (or "keep going for X metres") until the car
  is within the next junction's trigger distance of its stop line; then that junction's maneuver
  ("turn left at the next intersection", "in 25 metres, turn right", "follow the road" at a bend)
  until the car has left the junction box. LMDrive's InstructionPlanner triggers at 10-40 m from
  the junction, most often at 25-30 m; each junction draws its distance from that.
* Notices: a pedestrian or a stopped vehicle ahead, a red light before the junction, shown for
  :data:`~scenes.procedural.instructions.NOTICE_FRAMES` frames, the same kind at most every
  :data:`~scenes.procedural.instructions.NOTICE_GAP` frames (as in the recorded drives).
* Misleading: at each change of the navigation instruction, with LangAuto's probability 0.2, an
  instruction the car cannot follow (a turn the junction lacks, a lane change on a one-lane road)
  for 20 frames; a good agent ignores it.

What is shown at a frame: misleading, else the navigation with a notice said after it, else the
navigation (the recorded drives' order; LMDrive gives notices as a separate input, so a notice never
hides the navigation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from closedloop.routes import BuiltRoute
from driving.vehicle import HALF_LENGTH
from scenes.procedural.instructions import (
    MISLEADING_FRAMES,
    MISLEADING_SHARE,
    NOTICE_FRAMES,
    NOTICE_GAP,
    TYPES,
    make_instruction,
    maneuver_instruction,
    misleading_instruction,
    notice_kind,
    with_notice,
)
from scenes.procedural.world import FrameState
from schemas.scene import Instruction

TRIGGER_USUAL_M, TRIGGER_RANGE_M, TRIGGER_USUAL_SHARE = (25.0, 30.0), (10.0, 40.0), 0.7


@dataclass(frozen=True)
class Issued:
    """An instruction shown from ``frame`` on; ``kind``: navigation, notice or misleading."""

    frame: int
    kind: str
    instruction: Instruction


class InstructionSchedule:
    """The instructions of one route, frame by frame (:meth:`update`), drawn from ``rng``."""

    def __init__(self, built: BuiltRoute, rng: np.random.Generator):
        self.built, self.rng = built, rng
        self.junctions = built.route.maneuvers[: len(built.spec.turns)]
        self.triggers = [
            float(rng.uniform(*TRIGGER_USUAL_M))
            if rng.random() < TRIGGER_USUAL_SHARE
            else float(rng.uniform(*TRIGGER_RANGE_M))
            for _ in self.junctions
        ]
        self.navigation: Instruction | None = None
        self.navigation_key: tuple | None = None
        self.misleading: tuple[Instruction, int] | None = None  # and its last frame
        self.notice: tuple[Instruction, int] | None = None
        self.last_notice: dict[str, int] = {}
        self.shown: Instruction | None = None
        self.issued: list[Issued] = []

    def update(self, frame: int, f: FrameState) -> Instruction:
        """The instruction shown at recorded frame ``frame`` (state ``f``)."""
        front = f.ego_s + HALF_LENGTH
        j = next((i for i, m in enumerate(self.junctions) if front < m.s_exit + 1.0), None)
        self._navigate(frame, j, front)
        kind = notice_kind(self.built.town, self.built.route, f)
        if kind is not None and frame - self.last_notice.get(kind, -NOTICE_GAP) >= NOTICE_GAP:
            self.last_notice[kind] = frame
            self.notice = (make_instruction(kind, self.rng), frame + NOTICE_FRAMES - 1)
        shown, what = self.navigation, "navigation"
        if self.notice is not None and frame <= self.notice[1]:
            shown, what = with_notice(self.navigation, self.notice[0]), "notice"
        if self.misleading is not None and frame <= self.misleading[1]:
            shown, what = self.misleading[0], "misleading"
        if shown != self.shown:
            self.shown = shown
            self.issued.append(Issued(frame, what, shown))
        return shown

    def _navigate(self, frame: int, j: int | None, front: float) -> None:
        """Set the navigation instruction for junction ``j`` (None: past the last one)."""
        if j is None:
            key = ("follow", len(self.junctions))
        else:
            m = self.junctions[j]
            near = m.s_stop - front <= self.triggers[j]
            key = ("maneuver" if near else "follow", j)
        if key == self.navigation_key:
            return
        self.navigation_key = key
        if key[0] == "maneuver":
            m = self.junctions[j]
            self.navigation = maneuver_instruction(self.built.town, m, m.s_stop - front, self.rng)
        elif j is not None and self.rng.random() < 0.5:
            distance = self.junctions[j].s_stop - front
            self.navigation = make_instruction(
                "keep_going_dist", self.rng, x=int(max(5, round(distance / 5.0) * 5))
            )
        else:
            self.navigation = make_instruction("follow_lane", self.rng)
        if self.rng.random() < MISLEADING_SHARE:
            m = self.junctions[j] if j is not None else None
            lie = misleading_instruction(self.built.town, m, self.rng)
            self.misleading = (lie, frame + MISLEADING_FRAMES - 1)


def random_instruction(rng: np.random.Generator) -> Instruction:
    """Any navigation, follow or notice instruction, with a random distance where it takes one:
    what the random-instruction baseline is told instead of the route's."""
    kinds = [k for k, t in TYPES.items() if t.category in ("turn", "follow", "notice")]
    kind = kinds[rng.integers(len(kinds))]
    return make_instruction(kind, rng, x=int(rng.integers(1, 10)) * 5)
