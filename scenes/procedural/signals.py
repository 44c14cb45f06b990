"""Traffic-signal timing: one green per approach in turn, then a pedestrian walk phase.

Giving each approach its own phase (split phasing) means vehicles with green never cross each
other's paths, and pedestrians cross only while every approach is red.
"""

from __future__ import annotations

from scenes.procedural.town import Town

GREEN, YELLOW, ALL_RED = 5.0, 2.5, 1.5
WALK, WALK_CLEAR = 6.0, 2.0
WALK_START_WINDOW = 2.0  # pedestrians start crossing only early in the walk phase


def cycle_length(n_arms: int) -> float:
    return n_arms * (GREEN + YELLOW + ALL_RED) + WALK + WALK_CLEAR


def _phase_time(town: Town, node: tuple[int, int], t: float) -> tuple[float, list[int]]:
    arms = town.arms(node)
    return (t + town.light_offset[node]) % cycle_length(len(arms)), arms


def light_state(town: Town, node: tuple[int, int], k_travel: int, t: float) -> str:
    """State ('red', 'yellow', 'green', or 'none' without a signal) for traffic travelling in
    direction ``k_travel`` into ``node`` at time ``t``."""
    if not town.has_light(node):
        return "none"
    tt, arms = _phase_time(town, node, t)
    arm = (k_travel + 2) % 4
    start = arms.index(arm) * (GREEN + YELLOW + ALL_RED)
    if start <= tt < start + GREEN:
        return "green"
    if start + GREEN <= tt < start + GREEN + YELLOW:
        return "yellow"
    return "red"


def may_start_crossing(town: Town, node: tuple[int, int], t: float) -> bool:
    """Whether a pedestrian may step onto a crossing at ``node`` now."""
    if not town.has_light(node):
        return False
    tt, arms = _phase_time(town, node, t)
    walk_start = len(arms) * (GREEN + YELLOW + ALL_RED)
    return walk_start <= tt < walk_start + WALK_START_WINDOW
