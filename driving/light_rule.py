"""InterFuser's red-light rule on top of LMDrive's controller: brake while the perceived light says
stop, whatever the waypoints ask.

InterFuser (LMDrive's predecessor from the same group, whose perception heads LMDrive's vision
encoder keeps) drives with a safety controller: its ``interfuser_controller.py`` sets the desired
speed to 0 while the traffic-light head's probability of red or yellow exceeds 0.3, and, so that a
light misread as red for good cannot strand the car, ignores the head for 80 ticks (4 s at 20 Hz)
once it has read above 0.7 for 1000 ticks (50 s). LMDrive's own agent has no such rule: its car
does what the waypoints say. :class:`LightRuleController` is that rule in our time base, fed by our
vision encoder's light reading (:attr:`~lmgendrive.rollout.PlanResult.light`: its light reader's
where it has one, else its light head's); closed-loop rows that use it are labelled as such, never
as the model alone. It is a :class:`~driving.lane_assist.LaneAssistController` too: with
:attr:`lane_pose` set, InterFuser's rule brakes on the plan the lane assist corrected.
"""

from __future__ import annotations

import numpy as np

from driving.control import Control
from driving.lane_assist import LaneAssistController, assist

STOP_THRESHOLD = 0.3  # InterFuser: brake while P(red or yellow) > 0.3
# Our light reader (vision.light_reader): brake while red or yellow is the likelier
# reading. Standing at the stop line when the light turns green it reads green at 0.52-0.67 and
# still red at 0.28-0.41 (the expert sets off at once, so its drives show few green frames there):
# at InterFuser's 0.3 the car waits through every green phase (README, closed-loop section).
READER_STOP_THRESHOLD = 0.5
STUCK_THRESHOLD = 0.7  # ... and count the time the head has read above 0.7
STUCK_SECONDS = 50.0  # 1000 ticks at 20 Hz: then
RELEASE_SECONDS = 4.0  # ignore the head for 80 ticks


class RedLightRule:
    """Whether to stop for the light, frame by frame at ``fps`` (InterFuser's counters): while the
    probability that it says stop exceeds ``stop_threshold``."""

    def __init__(self, fps: float, stop_threshold: float = STOP_THRESHOLD):
        self.stop_threshold = stop_threshold
        self.stuck_frames = round(STUCK_SECONDS * fps)
        self.release_frames = round(RELEASE_SECONDS * fps)
        self.red_run = 0
        self.released = 0

    def stop(self, stop_prob: float) -> bool:
        """True when the car must stop, given this frame's probability that the light says stop
        (red or yellow)."""
        self.red_run = self.red_run + 1 if stop_prob > STUCK_THRESHOLD else 0
        if self.red_run > self.stuck_frames:
            self.released, self.red_run = self.release_frames, 0
        if self.released > 0:
            self.released -= 1
            return False
        return stop_prob > self.stop_threshold


class LightRuleController(LaneAssistController):
    """LMDrive's :class:`~driving.control.WaypointController` whose desired speed is 0 while
    :class:`RedLightRule` says stop; set :attr:`stop_prob` from the newest frame before each
    :meth:`step` (and :attr:`lane_pose` for the lane assist, None by default: no assist)."""

    def __init__(
        self, fps: float, max_speed: float = np.inf, stop_threshold: float = STOP_THRESHOLD
    ):
        super().__init__(max_speed)
        self.rule = RedLightRule(fps, stop_threshold)
        self.stop_prob = 0.0
        self.stopping = False

    def step(self, waypoints: np.ndarray, speed: float) -> Control:
        self.stopping = self.rule.stop(self.stop_prob)
        if self.lane_pose is not None:
            waypoints = assist(waypoints, *self.lane_pose)
        return self.control(waypoints, speed, 0.0 if self.stopping else self.max_speed)
