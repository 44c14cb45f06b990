import numpy as np
import pytest

from driving.control import WAYPOINT_DT, PIDController, WaypointController


def test_pid_is_lmdrive_formula():
    pid = PIDController(1.25, 0.75, 0.3, n=4)
    assert pid.step(1.0) == pytest.approx(1.25 * 1.0 + 0.75 * (1.0 / 4) + 0.3 * 1.0)
    assert pid.step(0.5) == pytest.approx(1.25 * 0.5 + 0.75 * (1.5 / 4) + 0.3 * (0.5 - 1.0))


def _straight(speed):
    t = np.array([1, 2, 3, 4]) * WAYPOINT_DT
    return np.stack([speed * t, np.zeros(4)], axis=1)


def test_brakes_when_waypoints_collapse():
    c = WaypointController().step(np.zeros((4, 2)), speed=5.0)
    assert c.brake == 1.0 and c.throttle == 0.0


def test_brakes_when_too_fast_and_accelerates_when_too_slow():
    assert WaypointController().step(_straight(4.0), speed=6.0).brake == 1.0
    c = WaypointController().step(_straight(8.0), speed=2.0)
    assert c.brake == 0.0 and 0.0 < c.throttle <= 0.75


def test_steer_sign_follows_carla_positive_right():
    wp = _straight(6.0)
    right = wp + np.array([0.0, -1.0]) * np.arange(1, 5)[:, None]  # ego frame: y is left
    left = wp + np.array([0.0, 1.0]) * np.arange(1, 5)[:, None]
    assert WaypointController().step(right, speed=5.0).steer > 0.05
    assert WaypointController().step(left, speed=5.0).steer < -0.05
    assert WaypointController().step(wp, speed=5.0).steer == pytest.approx(0.0)


def test_max_speed_caps_the_desired_speed():
    """A plan past the cap coasts (no throttle) at the cap and brakes beyond 1.1x it, as a plan
    asking for the cap itself would; below the cap nothing changes."""
    fast = _straight(12.0)
    uncapped = WaypointController().step(fast, speed=8.2)
    assert uncapped.throttle > 0.5 and uncapped.brake == 0.0
    capped = WaypointController(max_speed=8.0).step(fast, speed=8.2)
    assert capped.throttle == 0.0 and capped.brake == 0.0
    assert WaypointController(max_speed=8.0).step(fast, speed=9.0).brake == 1.0
    slow = WaypointController(max_speed=8.0).step(_straight(6.0), speed=4.0)
    assert slow == WaypointController().step(_straight(6.0), speed=4.0)


# --------------------------------------------------------------- InterFuser's red-light rule
def test_light_rule_stops_above_interfusers_threshold_only():
    from driving.light_rule import STOP_THRESHOLD, RedLightRule

    rule = RedLightRule(fps=10)
    assert rule.stop(STOP_THRESHOLD + 0.01) and not rule.stop(STOP_THRESHOLD)
    likelier = RedLightRule(fps=10, stop_threshold=0.5)  # the light reader's: the likelier reading
    assert likelier.stop(0.51) and not likelier.stop(0.45)
    assert not rule.stop(0.0) and rule.stop(1.0)


def test_light_rule_lets_go_for_4_s_after_50_s_of_red_then_stops_again():
    """A light read as red for good cannot strand the car: after 50 s above 0.7 the rule is
    ignored for 4 s (InterFuser's 1000 and 80 ticks at 20 Hz), then holds again."""
    from driving.light_rule import RedLightRule

    rule = RedLightRule(fps=10)
    said = [rule.stop(0.9) for _ in range(500 + 1 + 40 + 5)]
    assert all(said[:500])  # 50 s of stopping
    assert said[500:541] == [False] * 40 + [True]  # the 4 s release, then stopping again
    assert all(said[541:])
    rule = RedLightRule(fps=10)
    said = [rule.stop(0.5) for _ in range(600)]  # above 0.3, never above 0.7: no release
    assert all(said)


def test_light_rule_controller_brakes_for_the_light_and_is_lmdrive_otherwise():
    from driving.light_rule import LightRuleController

    wp = _straight(6.0)
    ruled, plain = LightRuleController(fps=10), WaypointController()
    ruled.stop_prob = 0.0
    for speed in (0.0, 2.0, 4.0):
        assert ruled.step(wp, speed) == plain.step(wp, speed)
        assert not ruled.stopping
    ruled.stop_prob = 0.9
    c = ruled.step(wp, 4.0)
    assert ruled.stopping and c.brake == 1.0 and c.throttle == 0.0
    assert c.steer == pytest.approx(plain.step(wp, 4.0).steer, abs=0.2)


def test_light_rule_controller_with_a_lane_pose_brakes_on_the_assisted_plan():
    from driving.lane_assist import LaneAssistController
    from driving.light_rule import LightRuleController

    wp = _straight(6.0)
    ruled, assisted = LightRuleController(fps=10), LaneAssistController()
    ruled.lane_pose = assisted.lane_pose = (0.8, 0.0)  # 0.8 m left of the lane centre
    ruled.stop_prob = 0.0
    c = ruled.step(wp, 4.0)
    assert c == assisted.step(wp, 4.0) and c.steer > 0.0  # steers back right, as the assist does
    ruled.stop_prob = 0.9
    c = ruled.step(wp, 4.0)
    assert ruled.stopping and c.brake == 1.0 and c.throttle == 0.0 and c.steer > 0.0
