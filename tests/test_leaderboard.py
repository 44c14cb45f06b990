"""The CARLA leaderboard 1.0 scoring rules on constructed routes: each infraction's penalty,
off-lane driving, early terminations, and collisions counted once."""

from __future__ import annotations

import numpy as np
import pytest

from driving.leaderboard import Event, route_timeout, score_route


@pytest.mark.parametrize(
    "kind, penalty",
    [
        ("collision_pedestrian", 0.50),
        ("collision_vehicle", 0.60),
        ("collision_static", 0.65),
        ("red_light", 0.70),
        ("stop_sign", 0.80),
    ],
)
def test_each_infraction_multiplies_the_infraction_score_by_its_penalty(kind, penalty):
    one = score_route(100.0, [Event(kind, 10.0, "a", 0.0, 0.0)])
    assert one.rc == 100.0 and one.infraction_score == pytest.approx(penalty)
    assert one.ds == pytest.approx(100.0 * penalty) and one.counts == {kind: 1}
    two = score_route(100.0, [Event(kind, 10.0, "a", 0.0, 0.0), Event(kind, 40.0, "b", 50.0, 0.0)])
    assert two.infraction_score == pytest.approx(penalty**2)


def test_a_clean_route_driven_to_its_end_scores_100():
    clean = score_route(99.5, [])
    assert (clean.rc, clean.infraction_score, clean.ds, clean.ended_by) == (100.0, 1.0, 100.0, None)


@pytest.mark.parametrize("ending", ["route_deviation", "agent_blocked", "route_timeout"])
def test_an_early_end_keeps_the_completion_reached(ending):
    """Straying beyond the route tolerance, standing still too long or running out of time ends
    the route where the agent got to: RC is that share, with no penalty of its own."""
    score = score_route(42.0, [Event("red_light", 5.0), Event(ending, 30.0)])
    assert score.rc == 42.0 and score.ended_by == ending
    assert score.infraction_score == pytest.approx(0.7) and score.ds == pytest.approx(42.0 * 0.7)


def test_driving_outside_the_lanes_reduces_the_infraction_score_by_its_share():
    score = score_route(100.0, [Event("collision_vehicle", 1.0, "car")], outside_lanes_percent=25)
    assert score.infraction_score == pytest.approx(0.6 * 0.75)


def test_a_collision_is_counted_once_however_long_the_contact():
    """The same actor again within 5 s, or any contact within 3 m of a counted one, is the same
    collision; the same actor after 5 s and 3 m away is a new one."""
    scraping = [Event("collision_vehicle", 10.0 + 0.1 * k, "car7", 0.2 * k, 0.0) for k in range(20)]
    assert score_route(100.0, scraping).counts == {"collision_vehicle": 1}
    pileup = [
        Event("collision_vehicle", 10.0, "car7", 0, 0),
        Event("collision_static", 11, "pole", 1, 1),
    ]
    assert score_route(100.0, pileup).counts == {"collision_vehicle": 1}
    again = [
        Event("collision_vehicle", 10.0, "car7", 0, 0),
        Event("collision_vehicle", 16, "car7", 20, 0),
    ]
    assert score_route(100.0, again).infraction_score == pytest.approx(0.36)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown event kind"):
        score_route(50.0, [Event("speeding", 1.0)])
    with pytest.raises(ValueError, match="0..100"):
        score_route(120.0, [])


def test_the_route_timeout_grows_with_the_route():
    assert route_timeout(500.0) == pytest.approx(200.0) and route_timeout(100.0) < route_timeout(
        500.0
    )


def _drive(town, seed: int, frames: int, agent, turns=None) -> object:
    from scenes.procedural.world import TICKS_PER_FRAME, World

    world = World(town, seed, turns)
    for _ in range(frames * TICKS_PER_FRAME):
        world.tick(agent(world))
    return world.log


def test_a_blind_lane_keeper_collides_and_runs_red_lights_where_the_expert_does_not():
    """The monitor on real drives of the procedural world: the same worlds driven by the expert
    and by a constant-speed lane keeper blind to traffic and signals."""
    from scenes.procedural.infractions import collisions, red_lights
    from scenes.procedural.town import make_town

    expert, blind = [], []
    for seed in (1, 2):
        town = make_town(300 + seed)
        for agent, events in ((lambda w: None, expert), (lambda w: w.lane_waypoints(8.0), blind)):
            log = _drive(town, seed, 150, agent)
            events += collisions(log) + red_lights(log)
    kinds = {e.kind for e in blind}
    assert not expert
    assert "red_light" in kinds and kinds & {"collision_vehicle", "collision_pedestrian"}
    assert score_route(100.0, blind).infraction_score < 0.5


def test_straying_standing_and_slowness_end_the_route():
    from scenes.procedural.infractions import route_ends
    from scenes.procedural.town import make_town

    town = make_town(310)
    still = _drive(town, 0, 40, lambda w: np.zeros((4, 2)))
    assert [e.kind for e in route_ends(still, timeout_s=2.0)] == ["route_timeout"]
    assert [e.kind for e in route_ends(still, timeout_s=60.0, blocked_s=2.0)] == ["agent_blocked"]
    assert route_ends(still, timeout_s=60.0) == []
    ahead = np.array([[1.6, 0.0], [3.2, 0.0], [4.8, 0.0], [6.4, 0.0]])  # straight on at 8 m/s
    lost = _drive(town, 0, 200, lambda w: ahead, turns=["left", "left"])
    assert [e.kind for e in route_ends(lost, timeout_s=60.0)] == ["route_deviation"]
