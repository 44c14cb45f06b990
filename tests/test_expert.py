"""The expert driver in isolation: it yields, follows at a gap and stops at red lights."""

import numpy as np
import pytest

from driving.vehicle import HALF_LENGTH
from scenes.procedural.expert import Expert
from scenes.procedural.geometry import Polyline
from scenes.procedural.instructions import TYPES
from scenes.procedural.routes import Route, first_obstacle
from scenes.procedural.signals import light_state
from scenes.procedural.town import make_town
from scenes.procedural.traffic import agent_arrays
from scenes.procedural.world import SIM_DT

NODE = (1, 1)


def _straight(node, k_in, options):
    return k_in if k_in in options else options[0]


def _expert(s: float = 5.0, speed: float = 7.0):
    town = make_town(5)
    route = Route(town, NODE, 0, _straight)  # eastbound from junction (1, 1)
    return town, route, Expert(town, route, s, speed)


def _drive(expert, town, agents_at, t0=0.0, seconds=8.0):
    t = t0
    for _ in range(int(seconds / SIM_DT)):
        pos, vel, is_ped = agents_at(t)
        expert.step(SIM_DT, t, agent_arrays(pos, vel, is_ped, np.arange(len(pos))))
        t += SIM_DT
    return t


def test_yields_to_a_pedestrian_standing_in_the_lane():
    town, route, ex = _expert()
    route.ensure(0.0)
    ped = route.path.point(ex.s + 20.0)
    _drive(
        ex, town, lambda t: (ped[None], np.zeros((1, 2)), np.array([True])), t0=1e4, seconds=15.0
    )
    assert ex.v < 0.05
    gap = np.linalg.norm(ex.xy - ped) - HALF_LENGTH
    assert 0.5 < gap < 6.0


def test_follows_a_slow_vehicle_at_a_safe_gap():
    town, route, ex = _expert(speed=8.0)
    lead_s0, lead_v = ex.s + 25.0, 3.0

    def lead(t):
        s = lead_s0 + lead_v * (t - 1e4)
        h = route.path.heading(s)
        return (
            route.path.point(s)[None],
            np.array([[lead_v * np.cos(h), lead_v * np.sin(h)]]),
            np.array([False]),
        )

    gaps = []
    t = 1e4
    for _ in range(12):
        t = _drive(ex, town, lead, t0=t, seconds=0.5)
        gaps.append(np.linalg.norm(ex.xy - lead(t)[0][0]) - 2 * HALF_LENGTH)
    assert min(gaps) > 2.0
    assert ex.v == pytest.approx(lead_v, abs=0.8)


def test_stops_at_a_red_light():
    town, route, ex = _expert(s=5.0, speed=8.0)
    route.ensure(ex.s)
    m = route.maneuvers[0]
    t0 = next(
        t
        for t in np.arange(0, 200, 0.1)
        if light_state(town, m.node, m.k_in, t) == "red"
        and light_state(town, m.node, m.k_in, t - 0.1) != "red"
    )
    _drive(
        ex,
        town,
        lambda t: (np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0, bool)),
        t0=t0,
        seconds=12.0,
    )
    front = ex.s + HALF_LENGTH
    assert ex.v < 0.05 and m.s_stop - 3.0 < front <= m.s_stop + 0.5


def test_every_instruction_type_has_eight_paraphrases():
    ids = [t.instruction_id for t in TYPES.values()]
    assert len(ids) == len(set(ids))
    for name, t in TYPES.items():
        assert len(set(t.templates)) >= 8, name
        lo, hi = {"turn": (0, 33), "follow": (34, 49), "notice": (50, 59), "other": (60, 64)}[
            t.category
        ]
        assert lo <= t.instruction_id <= hi
        if "dist" in name:
            assert all("{x}" in s for s in t.templates)


def test_first_obstacle_finds_an_agent_at_the_far_end_of_a_bend_and_none_beside_it():
    """A quarter circle of 10 m radius: an agent on the path 14.8 m ahead of the front (near the
    end of a 15 m look-ahead) is the obstacle at that distance less its half length; one 2.2 m
    outside the bend there (beyond a vehicle's 2.1 m lateral reach) leaves the way clear."""
    a = np.linspace(0.0, np.pi / 2, 200)
    path = Polyline(np.stack([10 * np.sin(a), 10 - 10 * np.cos(a)], axis=1))
    ahead = path.point(14.8)
    outward = (ahead - (0.0, 10.0)) / np.linalg.norm(ahead - (0.0, 10.0))

    def gap(position):
        return first_obstacle(
            path,
            0.0,
            15.0,
            np.array([position]),
            np.zeros((1, 2)),
            np.array([HALF_LENGTH]),
            np.array([2.1]),
        )

    found, _, index = gap(ahead)
    assert index == 0 and abs(found - (14.8 - 2.1 - HALF_LENGTH)) <= 0.5
    assert gap(ahead + 2.2 * outward) == (np.inf, 0.0, -1)
