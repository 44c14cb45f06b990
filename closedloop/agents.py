"""The agents a closed-loop route can be driven by.

Every agent sees one observation per recorded frame (10 Hz) and returns LMDrive's PID control,
held for the two 20 Hz physics ticks of the frame, as LMDrive's agent holds it in CARLA. The
expert is the exception: it is the world's own rule-based driver, privileged (it sees every actor
and signal) and planning at 20 Hz; it is the ceiling the benchmark is checked against.

* :class:`ExpertAgent`: the privileged expert (the driver of the training drives).
* :class:`LabelOracleAgent`: LMDrive's PID controllers on the waypoints the planner is trained to
  predict, computed for the state the car is in (privileged): a perfect planner's ceiling.
* :class:`LaneKeepingAgent`: follows its route's lane centre at a constant speed, blind to
  traffic, pedestrians and lights (it knows the route, so it needs no instructions).
* :class:`ModelAgent`: our model, from the three camera views, the speedometer, odometry and the
  route's instructions; ``random_instructions`` swaps each instruction for a random one (how much
  of the score comes from following language); ``light_rule`` drives it with InterFuser's
  red-light rule on its own light head (:mod:`driving.light_rule`), the ``model_light_rule`` row:
  not the paper's agent, which has the waypoints and LMDrive's PID controllers alone;
  ``lane_oracle`` drives it with the lane assist (:mod:`driving.lane_assist`) fed the car's true
  offset from its lane centre and heading error, the ``model_lane_oracle`` row: privileged, a
  diagnostic like ``label_oracle`` (what knowing its place in the lane would be worth to the
  planner, which cannot tell it: ``bench/lane_probe.py``); ``lane_reader`` drives it with the
  lane assist fed the model's own lane reader on the same frames, the ``model_lane_assist`` row
  (not privileged; not the paper's agent either); ``assisted`` drives it with both, the lane
  assist on its lane reader and InterFuser's red-light rule on its light reader (the
  ``model_assisted`` row: the model's own perception in a safety controller, as InterFuser
  drives; not privileged, not the paper's agent).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from closedloop.langauto import random_instruction
from closedloop.model_driver import ModelDriver
from driving.control import Control, WaypointController
from lmgendrive.model import LMGenDrive
from scenes.procedural.expert import CRUISE_SPEED
from scenes.procedural.world import World
from schemas.scene import Instruction

LANE_KEEPING_SPEED = 5.0  # m/s, about the expert's mean speed on the benchmark's routes
# the agents that drive with a checkpoint
MODEL_AGENTS = (
    "model",
    "random_instruction",
    "model_light_rule",
    "model_lane_oracle",
    "model_lane_assist",
    "model_assisted",
)
AGENTS = ("expert", "label_oracle", "lane_keeping", *MODEL_AGENTS)


@dataclass
class Observation:
    """What an agent is given at one recorded frame."""

    frame: int
    images: dict[str, np.ndarray] | None  # view -> RGB uint8, for agents that need them
    speed: float
    pose: tuple[float, float, float]  # x, y, theta (odometry)
    instruction: Instruction


class ExpertAgent:
    """The world's rule-based expert (privileged)."""

    name, needs_images, privileged = "expert", False, True

    def reset(self, world: World, seed: int) -> None:
        pass

    def act(self, obs: Observation) -> Control | None:
        return None  # the world's expert plans and controls


class LabelOracleAgent:
    """A planner that predicts its training labels perfectly: at every frame the expert's future
    positions 0.2-0.8 s ahead from the state the car is in (:meth:`World.expert_waypoints`, the
    waypoints of a recorded drive's frame), through LMDrive's PID controllers as our model drives.
    Privileged (the expert sees every actor and signal). Where it falls short of the expert, the
    labels or the controllers lose what the expert does; where the model falls short of it, the
    planner is to blame (its errors, and the states they lead to that no recorded drive shows)."""

    name, needs_images, privileged = "label_oracle", False, False

    def reset(self, world: World, seed: int) -> None:
        self.world, self.controller = world, WaypointController()

    def act(self, obs: Observation) -> Control:
        return self.controller.step(self.world.expert_waypoints(), obs.speed)


class LaneKeepingAgent:
    """The lane centre at :data:`LANE_KEEPING_SPEED`, through LMDrive's PID controllers."""

    name, needs_images, privileged = "lane_keeping", False, False

    def __init__(self, speed: float = LANE_KEEPING_SPEED):
        self.speed = speed

    def reset(self, world: World, seed: int) -> None:
        self.world, self.controller = world, WaypointController()

    def act(self, obs: Observation) -> Control:
        return self.controller.step(self.world.lane_waypoints(self.speed), obs.speed)


class ModelAgent:
    """Our model driving from what its cameras see (see :class:`ModelDriver`)."""

    needs_images, privileged = True, False

    def __init__(
        self,
        model: LMGenDrive,
        random_instructions: bool = False,
        light_rule: bool = False,
        lane_oracle: bool = False,
        lane_reader: bool = False,
        assisted: bool = False,
    ):
        if random_instructions + light_rule + lane_oracle + lane_reader + assisted > 1:
            raise ValueError(
                "random instructions, the light rule, the lane assist and both are measured one "
                "at a time"
            )
        # never asked past the training drives' fastest: their expert cruises at CRUISE_SPEED
        lane = "given" if lane_oracle else "read" if lane_reader or assisted else None
        self.driver = ModelDriver(
            model, max_speed=CRUISE_SPEED, light_rule=light_rule or assisted, lane_assist=lane
        )
        self.random_instructions, self.lane_oracle = random_instructions, lane_oracle
        self.name = (
            "random_instruction"
            if random_instructions
            else "model_light_rule"
            if light_rule
            else "model_lane_oracle"
            if lane_oracle
            else "model_lane_assist"
            if lane_reader
            else "model_assisted"
            if assisted
            else "model"
        )

    @property
    def sees_center(self) -> bool:
        """Whether the model's vision encoder sees the centre view (the renderer draws it)."""
        return self.driver.model.config.vision.sees_center

    def reset(self, world: World, seed: int) -> None:
        self.world = world
        self.driver.reset()
        self.rng = np.random.default_rng([seed, 4409])
        self.given: Instruction | None = None
        self.told: str = ""

    def act(self, obs: Observation) -> Control:
        if obs.instruction is not self.given:
            self.given = obs.instruction
            told = random_instruction(self.rng) if self.random_instructions else obs.instruction
            self.told = told.text
        if self.lane_oracle:  # privileged: where the car stands against its route's lane centre
            f = self.world.log.frames[-1]
            x, y, theta = (float(v) for v in f.ego[:3])
            self.driver.lane_pose = self.world.log.route.path.lane_pose(f.ego_s, x, y, theta)
        _, control = self.driver.step(obs.images, obs.speed, obs.pose, self.told)
        return control
