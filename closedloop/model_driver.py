"""Our model driving in closed loop: one frame of the three views in, LMDrive's PID control out.

:class:`ModelDriver` keeps the model's :class:`~lmgendrive.rollout.RolloutState` across frames:
each new frame is encoded once and appended to the cached history tokens (never re-encoded), the
instruction is re-tokenised only when it changes, and the path driven since the last step is
measured from the poses seen (odometry), as the planner was trained. The simulator's agent
(:mod:`closedloop.agents`) and the CARLA adapter (:mod:`closedloop.carla_agent`) both drive
through it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

import numpy as np

from driving.control import Control, WaypointController
from driving.lane_assist import LaneAssistController
from driving.light_rule import READER_STOP_THRESHOLD, STOP_THRESHOLD, LightRuleController
from lmgendrive.model import LMGenDrive
from lmgendrive.rollout import PlanResult, RolloutState
from lmgendrive.vision import LIGHT_CLASSES
from schemas.errors import BadInputError

LANE_SOURCES = (None, "given", "read")  # where ModelDriver's lane assist learns the lane pose
IN_LANE = 0.5  # the lane reader's in-lane probability from which its pose is used


def driven_path(poses: deque | list, frames_per_step: int, num_waypoints: int) -> np.ndarray:
    """Where the ego was at the ``num_waypoints`` waypoint times of the last step, in the ego
    frame at that step's start (``frames_per_step`` frames ago): what the planner's previous action
    means in training. ``poses`` are (x, y, theta) at 10 Hz, oldest first, the current last; zeros
    until a whole step has been driven, as at the start of a training drive."""
    if len(poses) <= frames_per_step:
        return np.zeros((num_waypoints, 2), np.float32)
    x0, y0, th0 = poses[-1 - frames_per_step]
    every = frames_per_step // num_waypoints
    pts = np.array(
        [poses[-1 - frames_per_step + every * (k + 1)][:2] for k in range(num_waypoints)]
    )
    c, s = np.cos(th0), np.sin(th0)
    rel = pts - (x0, y0)
    return np.stack([rel @ (c, s), rel @ (-s, c)], axis=1).astype(np.float32)


class ModelDriver:
    """One car driven by ``model`` (batch of one), frame by frame at the model's frame rate;
    ``max_speed`` (m/s) caps the speed the controller asks for (see
    :class:`~driving.control.WaypointController`; None: LMDrive's controller, uncapped);
    ``light_rule`` adds InterFuser's red-light rule on the model's own light reading (its light
    reader's where it has one, at :data:`~driving.light_rule.READER_STOP_THRESHOLD`, else its
    light head's at InterFuser's threshold; :mod:`driving.light_rule`; off: LMDrive's
    agent, the waypoints alone); ``lane_assist`` pulls the plan towards the lane centre
    (:mod:`driving.lane_assist`) from where the car stands in its lane: ``"given"`` from
    :attr:`lane_pose`, which the caller sets before each :meth:`step` (the privileged oracle),
    ``"read"`` from the vision encoder's lane reader on the same frame (:func:`read_lane_pose`).
    Both together: the rule brakes on the assisted plan."""

    def __init__(
        self,
        model: LMGenDrive,
        seed: int = 0,
        max_speed: float | None = None,
        light_rule: bool = False,
        lane_assist: str | None = None,
    ):
        if lane_assist not in LANE_SOURCES:
            raise ValueError(f"lane_assist must be one of {LANE_SOURCES}, got {lane_assist!r}")
        if lane_assist == "read" and model.vision.lane_reader is None:
            raise BadInputError(
                "the lane assist reads the vision encoder's lane reader, which this model has "
                "none of (model vision.lane_reader)"
            )
        self.model, self.seed, self.light_rule = model, seed, light_rule
        self.lane_assist = lane_assist
        self.lane_pose: tuple[float, float] | None = None
        self.max_speed = np.inf if max_speed is None else float(max_speed)
        self.state: RolloutState | None = None
        self.instruction: str | None = None
        self.poses: deque = deque(maxlen=model.config.frames_per_step + 1)
        self.frames_encoded = 0

    def reset(self) -> None:
        """Forget the drive (a new route)."""
        self.state, self.instruction = None, None
        self.poses.clear()
        self.frames_encoded = 0

    def views(self, images: Mapping[str, np.ndarray]) -> np.ndarray:
        """The model's views (1, V, H, W, 3) from ``images`` (view name -> RGB uint8), and the
        centre view after them where the model's encoder sees it and ``images`` has it (else the
        encoder cuts it from the front view)."""
        missing = [v for v in self.model.config.views if v not in images]
        if missing:
            raise BadInputError(
                f"missing view(s) {missing}; the model needs {list(self.model.config.views)}"
            )
        seen = [v for v in self.model.config.vision_views if v in images]
        return np.stack([np.asarray(images[v]) for v in seen])[None]

    def controller(self) -> WaypointController:
        """A fresh controller for a new drive."""
        if self.light_rule:
            reader = self.model.vision.light_reader is not None
            threshold = READER_STOP_THRESHOLD if reader else STOP_THRESHOLD
            return LightRuleController(self.model.config.fps, self.max_speed, threshold)
        if self.lane_assist:
            return LaneAssistController(self.max_speed)
        return WaypointController(self.max_speed)

    def step(
        self,
        images: Mapping[str, np.ndarray],
        speed: float,
        pose: tuple[float, float, float],
        instruction: str,
    ) -> tuple[PlanResult, Control]:
        """Observe one frame (RGB views, speed m/s, pose x, y, theta in metres and radians, any
        fixed world frame) under ``instruction`` and plan: the plan and its PID control."""
        frames = self.views(images)
        self.poses.append(tuple(float(v) for v in pose))
        config = self.model.config
        driven = driven_path(self.poses, config.frames_per_step, config.vision.num_waypoints)
        if self.state is None:
            self.state = self.model.start(
                frames[:, :, None], [instruction], [self.seed], [speed], driven[None]
            )
            # the first frame, encoded once, stands for the whole history: a car at rest has seen
            # nothing else (the planner was trained on full histories)
            history = self.state.history
            self.state.history = history.expand(-1, config.llm.history_frames, -1, -1).clone()
            self.state.controllers = [self.controller()]
            self.instruction = instruction
        else:
            if instruction != self.instruction:
                self.model.instruct(self.state, [instruction])
                self.instruction = instruction
            self.model.observe(self.state, frames, [speed], driven[None])
        self.frames_encoded += 1
        controller = self.state.controllers[0]
        if self.lane_assist and isinstance(controller, LaneAssistController):
            controller.lane_pose = (
                self.lane_pose
                if self.lane_assist == "given"
                else read_lane_pose(self.state.lane[0].cpu().numpy())
            )
        if isinstance(controller, LightRuleController):
            controller.stop_prob = stop_probability(self.state.light[0].cpu().numpy())
        result = self.model.plan(self.state)
        throttle, brake, steer = (float(v) for v in result.controls[0])
        return result, Control(throttle=throttle, brake=brake, steer=steer)


def read_lane_pose(lane: np.ndarray) -> tuple[float, float] | None:
    """(lateral offset m, heading error rad) from the lane reader's outputs (offset, heading,
    in-lane probability), None where it does not see a lane (in-lane probability below
    :data:`IN_LANE`: a junction box, where there is no lane to keep)."""
    if lane[2] < IN_LANE:
        return None
    return float(lane[0]), float(lane[1])


def stop_probability(light: np.ndarray) -> float:
    """The probability that the light says stop (red or yellow) from class probabilities in
    :data:`~lmgendrive.vision.LIGHT_CLASSES` order."""
    return float(sum(light[LIGHT_CLASSES.index(c)] for c in ("red", "yellow")))
