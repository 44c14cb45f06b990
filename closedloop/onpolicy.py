"""On-policy drives for DAgger: the states an agent's own driving leads to, labelled by the expert.

A planner trained on the expert's drives sees, in closed loop, states no recorded drive has (a car
askew after a misleading instruction, a corner taken too fast) and its errors compound: behaviour
cloning's covariate shift. DAgger (Ross et al. 2011) drives the learnt policy, labels every state it
visits with what the expert would do there, and adds those windows to the training data.

:class:`OnPolicyRecorder` wraps an agent for :func:`closedloop.run.drive_route`: at every frame it
keeps the rendered views, the state and :meth:`World.expert_waypoints` (the waypoints a recorded
drive's frame would carry for that state); :meth:`OnPolicyRecorder.scene` returns the drive as a
contract :class:`~schemas.scene.Scene` that :func:`scenes.lmdrive.write_route` writes as an
LMDrive-format route, tagged ``source: onpolicy`` so training can draw its windows as a group
(:class:`lmgendrive.train.data.PlannerData`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from closedloop.agents import Observation
from closedloop.routes import BuiltRoute
from driving.control import Control, WaypointController
from scenes.lmdrive import write_index, write_route
from scenes.procedural.drive import frame_measurements
from scenes.procedural.world import FrameState, World
from schemas.scene import FPS, Instruction, InstructionSpan, Measurements
from storage.atomic import PARTIAL_SUFFIX

SOURCE = "onpolicy"  # the recorded scenes' tags["source"]


# The expert takes over where the agent has strayed this far from its route's centre line or its
# heading (HG-DAgger's gate): the leaderboard lets a car stray 30 m, and from there the expert's
# labels are U-turns back to the route (45 % of the first round's labels bent over 20 degrees,
# 2 % of the expert's drives'), which taught the planner to drive in circles. It hands back once
# the car is near the centre line again.
TAKEOVER = (1.5, np.radians(25.0))  # metres, radians
HAND_BACK = (0.5, np.radians(10.0))


class OnPolicyRecorder:
    """``agent`` driving as it does, its frames recorded with the expert's labels; where it strays
    beyond :data:`TAKEOVER` from its route, LMDrive's controllers on those labels drive until it is
    back within :data:`HAND_BACK` (the agent still sees every frame)."""

    def __init__(self, agent):
        self.agent = agent
        self.name = f"{agent.name}+takeover"
        self.needs_images, self.privileged = True, False

    @property
    def sees_center(self) -> bool:
        """The recorded views include the centre view when the agent's model sees it."""
        return getattr(self.agent, "sees_center", False)

    def reset(self, world: World, seed: int) -> None:
        self.agent.reset(world, seed)
        self.world, self.controller = world, WaypointController()
        self.taken_over = False
        self.takeover_frames = 0
        self.labels: list[np.ndarray] = []
        self.instructions: list[Instruction] = []
        self.images: list[dict[str, np.ndarray]] = []
        self.states: list[FrameState] = []

    def act(self, obs: Observation) -> Control:
        label = self.world.expert_waypoints().astype(np.float32)
        self.labels.append(label)
        self.instructions.append(obs.instruction)
        control = self.agent.act(obs)
        off, skew = self.off_route()
        gate = HAND_BACK if self.taken_over else TAKEOVER
        self.taken_over = off > gate[0] or skew > gate[1]
        if not self.taken_over:
            return control
        self.takeover_frames += 1
        return self.controller.step(label, obs.speed)

    def off_route(self) -> tuple[float, float]:
        """Metres from the route's centre line and radians off its heading, now."""
        e = self.world.expert
        path = e.route.path
        off = float(np.linalg.norm(path.point(e.s) - np.array([e.x, e.y])))
        skew = abs((e.theta - path.heading(e.s) + np.pi) % (2 * np.pi) - np.pi)
        return off, float(skew)

    def on_frame(self, frame: int, images: dict | None, state: FrameState) -> None:
        """:func:`closedloop.run.drive_route`'s per-frame hook: keep the views and the state."""
        self.images.append({v: np.ascontiguousarray(img) for v, img in images.items()})
        self.states.append(state)

    def scene(self, built: BuiltRoute, name: str) -> OnPolicyDrive:
        """The recorded drive as a scene called ``name``."""
        return OnPolicyDrive(name, built, self.states, self.images, self.labels, self.instructions)


class OnPolicyDrive:
    """A recorded on-policy drive as a contract :class:`~schemas.scene.Scene` (in memory)."""

    fps = FPS

    def __init__(
        self,
        name: str,
        built: BuiltRoute,
        states: list[FrameState],
        images: list[dict[str, np.ndarray]],
        labels: list[np.ndarray],
        instructions: list[Instruction],
    ):
        if not (len(states) == len(images) == len(labels) == len(instructions)):
            raise ValueError("an on-policy drive needs one state, image set, label and instruction")
        if not states:
            raise ValueError(f"on-policy drive {name!r} has no frames")
        self.name, self.built = name, built
        self.states, self._images, self.labels = states, images, labels
        self.views = tuple(images[0])
        self.size = tuple(images[0][self.views[0]].shape[:2])
        self._spans = _spans(instructions)
        self._completed = _completed(self._spans)
        self._instruction = [s.instruction for s in self._spans for _ in _frames(s)]

    def __len__(self) -> int:
        return len(self.states)

    @property
    def tags(self) -> dict:
        spec = self.built.spec
        return {
            "source": SOURCE,
            "town_seed": spec.town,
            "route_id": spec.route_id,
            "weather": spec.weather,
        }

    def instructions(self) -> list[InstructionSpan]:
        return list(self._spans)

    def images(self, i: int) -> dict[str, np.ndarray]:
        return dict(self._images[i])

    def measurements(self, i: int) -> Measurements:
        return frame_measurements(
            self.built.town,
            self.built.route,
            self.states[i],
            i,
            self.labels[i],
            self._instruction[i],
            i in self._completed,
            self.built.spec.weather,
        )


def write_onpolicy(scene: OnPolicyDrive, root: Path) -> Path:
    """Write ``scene`` as the LMDrive route ``root/<name>`` (atomically; a rerun replaces it)."""
    root.mkdir(parents=True, exist_ok=True)
    return write_route(scene, root / scene.name, overwrite=True)


def index_onpolicy(root: Path) -> Path:
    """Write ``root``'s ``dataset_index.txt`` listing every complete on-policy route there (named
    ``onpolicy_*``; folders still being written, ``*.partial``, are not)."""
    routes = sorted(
        d
        for d in root.glob(f"{SOURCE}_*")
        if d.is_dir() and not d.name.endswith((PARTIAL_SUFFIX, ".old"))
    )
    return write_index(root, routes)


def _completed(spans: list[InstructionSpan]) -> set[int]:
    """The frames at which a navigation instruction is completed: the last frame of a span (not a
    misleading one) after which the navigation changes (a notice said after it does not)."""
    kind = [s.instruction.args.get("type") for s in spans]
    return {
        s.end_frame
        for j, s in enumerate(spans[:-1])
        if not s.instruction.misleading and kind[j + 1] != kind[j]
    }


def _frames(span: InstructionSpan) -> range:
    return range(span.start_frame, span.end_frame + 1)


def _spans(shown: list[Instruction]) -> list[InstructionSpan]:
    """Runs of the same shown instruction as spans."""
    spans, start = [], 0
    for i in range(1, len(shown) + 1):
        if i == len(shown) or shown[i] != shown[start]:
            spans.append(InstructionSpan(shown[start], start, i - 1))
            start = i
    return spans
