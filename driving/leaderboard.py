"""Scoring a driven route as the CARLA leaderboard 1.0 does (LangAuto uses its rules).

Route completion RC: the share of the route driven, in percent; 100 once the agent reaches the
end. A route ends early on a route deviation (farther than :data:`ROUTE_TOLERANCE_M` from it), when
the agent is blocked (below :data:`BLOCKED_SPEED` for :data:`BLOCKED_SECONDS`) or at the route
timeout (:data:`SECONDS_PER_METRE` of route); RC is then what it had driven.

Infraction score IS: 1.0 multiplied by :data:`PENALTY` for every infraction, and by
``1 - p / 100`` for ``p`` percent of the route driven outside its lanes (off-road or in a lane going
the other way). Driving score DS = RC x IS per route; a benchmark's figure is the mean over routes.

Written here rather than imported: the leaderboard's ``statistics_manager`` needs CARLA and its
scenario runner, which cannot be installed here; the numbers are leaderboard 1.0's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

PENALTY = {
    "collision_pedestrian": 0.50,
    "collision_vehicle": 0.60,
    "collision_static": 0.65,
    "red_light": 0.70,
    "stop_sign": 0.80,
}
TERMINATIONS = ("route_deviation", "agent_blocked", "route_timeout")
ROUTE_TOLERANCE_M = 30.0  # InRouteTest offroad_max
BLOCKED_SPEED, BLOCKED_SECONDS = 0.1, 180.0  # ActorSpeedAboveThresholdTest
SECONDS_PER_METRE = 0.4  # route_scenario SECONDS_GIVEN_PER_METERS
COMPLETED_PERCENT = 99.0  # RouteCompletionTest: the route counts as done above this
SAME_COLLISION_S, SAME_COLLISION_M = 5.0, 3.0  # CollisionTest: one collision, not many


@dataclass(frozen=True)
class Event:
    """Something the monitor saw at time ``t`` (s): an infraction (a :data:`PENALTY` key), a
    termination (a :data:`TERMINATIONS` entry); ``actor`` names the other party of a collision,
    ``x, y`` where it happened."""

    kind: str
    t: float
    actor: str = ""
    x: float = 0.0
    y: float = 0.0


@dataclass
class RouteScore:
    """RC and IS in the leaderboard's units (RC and DS in percent, IS in [0, 1])."""

    rc: float
    infraction_score: float
    ds: float
    counts: dict[str, int] = field(default_factory=dict)
    ended_by: str | None = None  # the termination, or None when the route ran to its end


def route_timeout(route_length_m: float) -> float:
    """Seconds the agent has for a route of that length."""
    return SECONDS_PER_METRE * route_length_m


def count_collisions(events: list[Event]) -> list[Event]:
    """``events`` without the collisions CollisionTest does not count: one with the actor of the
    last counted collision within :data:`SAME_COLLISION_S` s of it, or one within
    :data:`SAME_COLLISION_M` m of any counted collision."""
    kept: list[Event] = []
    counted: list[Event] = []
    for e in sorted(events, key=lambda e: e.t):
        if e.kind.startswith("collision"):
            last = counted[-1] if counted else None
            if last is not None and last.actor == e.actor and e.t - last.t < SAME_COLLISION_S:
                continue
            if any(
                ((e.x - c.x) ** 2 + (e.y - c.y) ** 2) ** 0.5 < SAME_COLLISION_M for c in counted
            ):
                continue
            counted.append(e)
        kept.append(e)
    return kept


def score_route(
    completed_percent: float, events: list[Event], outside_lanes_percent: float = 0.0
) -> RouteScore:
    """The leaderboard's scores of one route from how much of it was driven (percent), what
    happened on it and the share of it driven outside its lanes (percent)."""
    if not 0.0 <= completed_percent <= 100.0 or not 0.0 <= outside_lanes_percent <= 100.0:
        raise ValueError("percentages must be within 0..100")
    unknown = {e.kind for e in events} - set(PENALTY) - set(TERMINATIONS)
    if unknown:
        raise ValueError(
            f"unknown event kind(s) {sorted(unknown)}; valid: {[*PENALTY, *TERMINATIONS]}"
        )
    counted = count_collisions(events)
    score = 1.0
    for e in counted:
        score *= PENALTY.get(e.kind, 1.0)
    score *= 1.0 - outside_lanes_percent / 100.0
    ended = next(
        (e.kind for e in sorted(counted, key=lambda e: e.t) if e.kind in TERMINATIONS), None
    )
    rc = 100.0 if ended is None and completed_percent > COMPLETED_PERCENT else completed_percent
    counts = dict(Counter(e.kind for e in counted))
    return RouteScore(rc, score, rc * score, counts, ended)
