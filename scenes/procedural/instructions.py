"""LangAuto-style instructions: templates, and the instruction timeline of a simulated drive.

Ids follow LMDrive's ranges: 0–33 turn, 34–49 follow, 50–59 notice, 60–64 other. Every
instruction type has at least eight paraphrases; ``{x}`` is a distance in metres, always filled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from driving.vehicle import HALF_LENGTH
from scenes.procedural.routes import Maneuver, Route
from scenes.procedural.signals import light_state
from scenes.procedural.town import Town, turn_between
from scenes.procedural.world import DriveLog, EgoEvent, FrameState
from schemas.scene import Instruction, InstructionSpan


@dataclass(frozen=True)
class InstructionType:
    instruction_id: int
    category: str
    templates: tuple[str, ...]


TYPES: dict[str, InstructionType] = {
    "turn_left": InstructionType(
        0,
        "turn",
        (
            "Turn left at the next intersection.",
            "At the next intersection, turn left.",
            "Take a left at the upcoming junction.",
            "Make a left turn at the next crossing.",
            "Go left at the next intersection.",
            "Please turn left when you reach the intersection.",
            "Prepare to turn left at the next junction.",
            "Head left at the coming intersection.",
        ),
    ),
    "turn_right": InstructionType(
        1,
        "turn",
        (
            "Turn right at the next intersection.",
            "At the next intersection, turn right.",
            "Take a right at the upcoming junction.",
            "Make a right turn at the next crossing.",
            "Go right at the next intersection.",
            "Please turn right when you reach the intersection.",
            "Prepare to turn right at the next junction.",
            "Head right at the coming intersection.",
        ),
    ),
    "go_straight": InstructionType(
        2,
        "turn",
        (
            "Go straight at the next intersection.",
            "Continue straight through the next intersection.",
            "Keep straight at the upcoming junction.",
            "Drive straight across the next crossing.",
            "Do not turn at the next intersection; go straight.",
            "Proceed straight through the junction ahead.",
            "At the next intersection, keep going straight.",
            "Cross the next intersection without turning.",
        ),
    ),
    "turn_left_dist": InstructionType(
        3,
        "turn",
        (
            "After {x} meters, execute a left turn.",
            "In {x} meters, turn left.",
            "Turn left in {x} meters.",
            "Drive {x} meters, then turn left at the intersection.",
            "After about {x} meters, take a left.",
            "In roughly {x} meters, make a left turn.",
            "Turn left at the intersection {x} meters ahead.",
            "Go {x} meters and then turn left.",
        ),
    ),
    "turn_right_dist": InstructionType(
        4,
        "turn",
        (
            "After {x} meters, execute a right turn.",
            "In {x} meters, turn right.",
            "Turn right in {x} meters.",
            "Drive {x} meters, then turn right at the intersection.",
            "After about {x} meters, take a right.",
            "In roughly {x} meters, make a right turn.",
            "Turn right at the intersection {x} meters ahead.",
            "Go {x} meters and then turn right.",
        ),
    ),
    "go_straight_dist": InstructionType(
        5,
        "turn",
        (
            "After {x} meters, go straight through the intersection.",
            "In {x} meters, continue straight.",
            "Keep straight at the intersection {x} meters ahead.",
            "Drive {x} meters and cross the junction straight.",
            "In about {x} meters, go straight at the crossing.",
            "Continue straight at the junction in {x} meters.",
            "After roughly {x} meters, keep going straight.",
            "Go {x} meters and do not turn at the intersection.",
        ),
    ),
    "follow_lane": InstructionType(
        34,
        "follow",
        (
            "Follow the current lane.",
            "Keep driving in this lane.",
            "Stay in your lane.",
            "Continue along the current lane.",
            "Keep to this lane and drive on.",
            "Follow the lane ahead.",
            "Maintain your lane.",
            "Drive along the lane you are in.",
        ),
    ),
    "follow_road": InstructionType(
        35,
        "follow",
        (
            "Follow the road as it bends.",
            "Keep following the road around the corner.",
            "Stay on this road through the bend.",
            "Follow the curve of the road.",
            "Continue along the road as it turns.",
            "Drive on and follow the bend.",
            "Keep to the road around the curve.",
            "Follow the road ahead through the corner.",
        ),
    ),
    "change_left": InstructionType(
        36,
        "follow",
        (
            "Change to the left lane.",
            "Move into the left lane.",
            "Switch to the lane on your left.",
            "Shift one lane to the left.",
            "Please change lanes to the left.",
            "Merge into the left lane.",
            "Get into the left lane now.",
            "Make a lane change to the left.",
        ),
    ),
    "change_right": InstructionType(
        37,
        "follow",
        (
            "Change to the right lane.",
            "Move into the right lane.",
            "Switch to the lane on your right.",
            "Shift one lane to the right.",
            "Please change lanes to the right.",
            "Merge into the right lane.",
            "Get into the right lane now.",
            "Make a lane change to the right.",
        ),
    ),
    "keep_going_dist": InstructionType(
        38,
        "follow",
        (
            "Keep going straight for {x} meters.",
            "Drive straight ahead for {x} meters.",
            "Continue along this road for {x} meters.",
            "Follow the road for the next {x} meters.",
            "Stay on course for {x} meters.",
            "Go on for about {x} meters.",
            "Keep your course for {x} meters.",
            "Drive on for roughly {x} meters.",
        ),
    ),
    "notice_pedestrian": InstructionType(
        50,
        "notice",
        (
            "Be mindful of pedestrians ahead.",
            "Watch out for the pedestrian in front.",
            "Pedestrians are crossing ahead, take care.",
            "Mind the people on the road ahead.",
            "Careful, someone is crossing in front of you.",
            "Look out for pedestrians ahead.",
            "There is a pedestrian ahead; be ready to stop.",
            "Pay attention to the pedestrian crossing.",
        ),
    ),
    "notice_red_light": InstructionType(
        51,
        "notice",
        (
            "Notice the red light ahead.",
            "The traffic light ahead is red.",
            "Red light ahead, prepare to stop.",
            "Watch the red signal in front.",
            "Stop for the red light ahead.",
            "The light ahead has turned red.",
            "Mind the red traffic light.",
            "Be ready to stop at the red light.",
        ),
    ),
    "notice_stopped_vehicle": InstructionType(
        52,
        "notice",
        (
            "The car ahead has stopped.",
            "Watch the stopped vehicle in front.",
            "Traffic ahead is standing still.",
            "Be careful, the vehicle ahead is not moving.",
            "Slow down, there is a stopped car ahead.",
            "Mind the queue ahead.",
            "The vehicle in front is waiting; keep your distance.",
            "Stopped traffic ahead, slow down.",
        ),
    ),
    "halt": InstructionType(
        60,
        "other",
        (
            "Please halt your vehicle immediately.",
            "Stop the car now.",
            "Bring the vehicle to a stop.",
            "Pull up and stop here.",
            "Stop right here, please.",
            "Come to a halt immediately.",
            "Halt the vehicle.",
            "Stop now and wait.",
        ),
    ),
    "slow_down": InstructionType(
        61,
        "other",
        (
            "Slow down and drive carefully.",
            "Reduce your speed.",
            "Drive slowly for a while.",
            "Please take it slow.",
            "Ease off and go slower.",
            "Lower your speed now.",
            "Keep a slow pace for now.",
            "Drive at a low speed.",
        ),
    ),
}
TYPE_BY_ID = {t.instruction_id: name for name, t in TYPES.items()}
NOTICE_FRAMES, NOTICE_GAP = 15, 60  # a notice shows 15 frames; the same kind again after 60
MISLEADING_SHARE, MISLEADING_FRAMES = 0.2, 20  # LangAuto: 20 % of changes, for 20 frames
NAVIGATION_PRIORITY, NOTICE_PRIORITY = 0, 1  # timeline priorities; misleading 2, others 3


def make_instruction(
    kind: str, rng: np.random.Generator, misleading: bool = False, **args
) -> Instruction:
    """An instruction of type ``kind`` with a random paraphrase and ``args`` filled in."""
    t = TYPES[kind]
    text = t.templates[rng.integers(len(t.templates))].format(**args)
    return Instruction(
        text=text,
        instruction_id=t.instruction_id,
        category=t.category,
        args={"type": kind, **args},
        misleading=misleading,
    )


def plan_events(rng: np.random.Generator, frames: int) -> list[EgoEvent]:
    """'Other' instructions that change what the expert does, decided before simulating."""
    events = []
    if frames > 120 and rng.random() < 0.25:
        events.append(EgoEvent("halt", int(rng.integers(40, frames - 80))))
    if frames > 120 and rng.random() < 0.2:
        start = int(rng.integers(20, frames - 60))
        if not any(abs(e.frame - start) < 80 for e in events):
            events.append(EgoEvent("slow", start, 50))
    return events


def build_timeline(
    log: DriveLog, events: list[EgoEvent], rng: np.random.Generator
) -> list[tuple[InstructionSpan, bool, int]]:
    """Every instruction span of the drive as ``(span, completed_at_end, priority)``."""
    spans = _navigation(log, rng)
    spans += _others(log, events, rng)
    spans += _notices(log, rng)
    spans += _misleading(log, [s for s, _, p in spans if p == NAVIGATION_PRIORITY], rng)
    return sorted(spans, key=lambda x: (x[0].start_frame, x[2]))


def _front_s(log: DriveLog, i: int) -> float:
    return log.frames[i].ego_s + HALF_LENGTH


def _navigation(log: DriveLog, rng) -> list:
    n = len(log.frames)
    out = []
    start = 0
    for m in log.route.maneuvers:
        if start >= n:
            break
        if _front_s(log, start) > m.s_exit:
            continue
        done = next((i for i in range(start, n) if _front_s(log, i) > m.s_exit + 1.0), None)
        end = done if done is not None else n - 1
        distance = m.s_stop - _front_s(log, start)
        if distance > 50.0 and rng.random() < 0.5:
            split = next((i for i in range(start, end) if m.s_stop - _front_s(log, i) <= 35.0), end)
            follow = (
                make_instruction("keep_going_dist", rng, x=int(round(distance / 5.0) * 5))
                if rng.random() < 0.5
                else make_instruction("follow_lane", rng)
            )
            if split > start:
                out.append((InstructionSpan(follow, start, split - 1), True, NAVIGATION_PRIORITY))
                start = split
                distance = m.s_stop - _front_s(log, start)
        out.append(
            (
                InstructionSpan(maneuver_instruction(log.town, m, distance, rng), start, end),
                done is not None,
                NAVIGATION_PRIORITY,
            )
        )
        start = end + 1
    return out


def maneuver_instruction(town: Town, m: Maneuver, distance: float, rng) -> Instruction:
    """The navigation instruction for junction ``m``, ``distance`` metres before its stop line."""
    turn = turn_between(m.k_in, m.k_out)
    if len(town.arms(m.node)) == 2:
        return make_instruction("follow_road", rng, direction=turn)
    kind = {"left": "turn_left", "right": "turn_right", "straight": "go_straight"}[turn]
    if distance >= 10.0 and rng.random() < 0.5:
        return make_instruction(kind + "_dist", rng, x=int(max(5, round(distance / 5.0) * 5)))
    return make_instruction(kind, rng)


def _others(log: DriveLog, events: list[EgoEvent], rng) -> list:
    out = []
    n = len(log.frames)
    for e in events:
        if e.frame >= n:
            continue
        if e.kind == "halt":
            done = log.halts_completed.get(e.frame)
            end = done if done is not None else n - 1
            out.append(
                (InstructionSpan(make_instruction("halt", rng), e.frame, end), done is not None, 3)
            )
        else:
            end = min(n - 1, e.frame + e.frames - 1)
            out.append((InstructionSpan(make_instruction("slow_down", rng), e.frame, end), True, 3))
    return out


def notice_kind(town: Town, route: Route, f: FrameState) -> str | None:
    """The notice frame ``f`` calls for: a pedestrian or a stopped vehicle ahead, or the red light
    of the junction the ego approaches; ``None`` when nothing needs noticing."""
    x, y, theta, v = f.ego
    c, s = np.cos(theta), np.sin(theta)

    def ahead(xy: np.ndarray, x_max: float, half_width: float) -> np.ndarray:
        rel = xy - (x, y)
        fx, fy = rel @ np.array([c, s]), rel @ np.array([-s, c])
        return (fx > 3.0) & (fx < x_max) & (np.abs(fy) < half_width)

    if v > 1.0 and len(f.pedestrians) and ahead(f.pedestrians[:, :2], 25.0, 3.0).any():
        return "notice_pedestrian"
    m = route.next_maneuver(f.ego_s + HALF_LENGTH)
    if m is not None and v > 1.0 and town.has_light(m.node):
        d = m.s_stop - f.ego_s - HALF_LENGTH
        if 5.0 < d < 30.0 and light_state(town, m.node, m.k_in, f.t) == "red":
            return "notice_red_light"
    if v > 2.0 and len(f.vehicles):
        slow = np.hypot(f.vehicles[:, 3], f.vehicles[:, 4]) < 0.5
        if (ahead(f.vehicles[:, :2], 25.0, 1.5) & slow).any():
            return "notice_stopped_vehicle"
    return None


def _notices(log: DriveLog, rng, duration: int = NOTICE_FRAMES, gap: int = NOTICE_GAP) -> list:
    out, last = [], {}
    for i, f in enumerate(log.frames):
        found = notice_kind(log.town, log.route, f)
        if found is not None and i - last.get(found, -gap) >= gap:
            last[found] = i
            end = min(len(log.frames) - 1, i + duration - 1)
            span = InstructionSpan(make_instruction(found, rng), i, end)
            out.append((span, False, NOTICE_PRIORITY))
    return out


def misleading_instruction(town: Town, m: Maneuver | None, rng) -> Instruction:
    """An instruction the ego cannot follow before junction ``m``: a turn it does not have, or
    else a lane change (the roads have one lane each way)."""
    missing = []
    if m is not None:
        present = town.turns(m.node, m.k_in)
        missing = [t for t in ("left", "right") if t not in present]
    if missing:
        return make_instruction("turn_" + missing[rng.integers(len(missing))], rng, misleading=True)
    return make_instruction(("change_left", "change_right")[rng.integers(2)], rng, misleading=True)


def _misleading(
    log: DriveLog,
    navigation: list[InstructionSpan],
    rng,
    p: float = MISLEADING_SHARE,
    duration: int = MISLEADING_FRAMES,
) -> list:
    """LangAuto inserts an infeasible instruction for 20 frames at 20 % of instruction changes."""
    out = []
    for span in navigation:
        if rng.random() >= p:
            continue
        m = log.route.next_maneuver(_front_s(log, span.start_frame))
        instr = misleading_instruction(log.town, m, rng)
        end = min(len(log.frames) - 1, span.start_frame + duration - 1)
        out.append((InstructionSpan(instr, span.start_frame, end), False, 2))
    return out


def with_notice(navigation: Instruction, notice: Instruction) -> Instruction:
    """``navigation`` with ``notice`` said after it: the navigation's id, category and type (what it
    asks for), the notice's kind under ``args["notice"]``. LMDrive gives its model notices as a
    separate input beside the navigation instruction; our single instruction string carries both,
    so a notice never hides where to turn."""
    return Instruction(
        text=f"{navigation.text} {notice.text}",
        instruction_id=navigation.instruction_id,
        category=navigation.category,
        args={**navigation.args, "notice": notice.args["type"]},
        misleading=navigation.misleading,
    )


def active_per_frame(
    timeline: list[tuple[InstructionSpan, bool, int]], n: int
) -> tuple[list[Instruction], np.ndarray]:
    """The instruction shown at every frame and whether it was just completed there.

    Priority: other > misleading > notice > navigation; a notice is said after the navigation
    instruction of its frame (:func:`with_notice`), not instead of it; a span completing at a frame
    is shown at that frame so its completion is visible.
    """
    none = Instruction(
        "Follow the current lane.",
        TYPES["follow_lane"].instruction_id,
        "follow",
        {"type": "follow_lane"},
    )
    active: list[Instruction] = [none] * n
    navigation: list[Instruction] = [none] * n
    completed = np.zeros(n, bool)
    rank = np.full(n, -1)
    for span, _, prio in timeline:
        for i in range(span.start_frame, span.end_frame + 1):
            if prio == NAVIGATION_PRIORITY:
                navigation[i] = span.instruction
            if prio > rank[i]:
                active[i], rank[i] = span.instruction, prio
    for i in np.flatnonzero(rank == NOTICE_PRIORITY):
        active[i] = with_notice(navigation[i], active[i])
    for span, done, _ in timeline:
        if done:
            active[span.end_frame] = span.instruction
            completed[span.end_frame] = True
            rank[span.end_frame] = 99
    return active, completed
