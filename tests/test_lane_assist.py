import numpy as np
import pytest

from driving.control import WAYPOINT_DT, WaypointController
from driving.lane_assist import GAIN, LaneAssistController, assist, lane_centre_y

STRAIGHT = np.stack([6.0 * WAYPOINT_DT * np.arange(1, 5), np.zeros(4)], axis=1)


def test_lane_centre_seen_from_a_car_off_centre_and_askew():
    # 1 m left of the centre, parallel: the centre is 1 m to the right at every distance
    np.testing.assert_allclose(lane_centre_y(np.array([0.0, 5.0]), 1.0, 0.0), [-1.0, -1.0])
    # on the centre, turned 10 degrees left: the centre line runs off to the right ahead
    y = lane_centre_y(np.array([0.0, 5.0]), 0.0, np.radians(10.0))
    assert y[0] == pytest.approx(0.0) and y[1] == pytest.approx(-5.0 * np.tan(np.radians(10.0)))


def test_assist_pulls_a_straight_plan_towards_the_lane_centre():
    moved = assist(STRAIGHT, lateral=1.0, heading=0.0)
    np.testing.assert_allclose(moved[:, 1], -GAIN * 1.0, atol=1e-6)
    np.testing.assert_allclose(moved[:, 0], STRAIGHT[:, 0])
    askew = assist(STRAIGHT, lateral=0.0, heading=np.radians(8.0))
    assert np.all(np.diff(askew[:, 1]) < 0)  # more to the right the farther ahead
    np.testing.assert_allclose(assist(STRAIGHT, 0.0, 0.0), STRAIGHT)


def test_assist_leaves_turns_alone():
    turn = STRAIGHT.copy()
    turn[:, 1] = [0.1, 0.3, 0.6, 1.0]
    np.testing.assert_allclose(assist(turn, lateral=1.0, heading=0.3), turn)


def test_controller_steers_back_only_when_it_knows_the_lane_pose():
    plain = WaypointController().step(STRAIGHT, speed=5.0)
    blind = LaneAssistController()
    assert blind.step(STRAIGHT, speed=5.0) == plain
    left_of_centre = LaneAssistController()
    left_of_centre.lane_pose = (1.0, 0.0)
    assert left_of_centre.step(STRAIGHT, speed=5.0).steer > 0.05  # CARLA: positive is right
    right_of_centre = LaneAssistController()
    right_of_centre.lane_pose = (-1.0, 0.0)
    assert right_of_centre.step(STRAIGHT, speed=5.0).steer < -0.05
