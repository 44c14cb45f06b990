"""A small deterministic contract scene for tests: a car driving straight at constant speed."""

from __future__ import annotations

import math

import numpy as np

from schemas.scene import (
    FPS,
    VIEWS,
    WAYPOINT_TIMES,
    Instruction,
    InstructionSpan,
    Measurements,
    SceneObject,
)


class FakeScene:
    """``n`` frames of random images; poses, waypoints and objects consistent with each other.

    ``fail_at``: frame whose images raise ``RuntimeError`` (to test failed writes).
    """

    views = VIEWS
    fps = FPS

    def __init__(
        self,
        n: int = 12,
        size: tuple[int, int] = (32, 48),
        name: str = "fake_route",
        speed: float = 5.0,
        heading: float = 0.5,
        fail_at: int | None = None,
    ):
        self.n, self.size, self.name = n, size, name
        self.speed, self.heading, self.fail_at = speed, heading, fail_at

    def __len__(self) -> int:
        return self.n

    @property
    def tags(self) -> dict:
        return {"town_id": 3, "weather_id": 4, "seed": 7}

    def instructions(self) -> list[InstructionSpan]:
        turn = Instruction("After 12 meters, turn left.", 1, "turn", {"x": 12, "direction": "left"})
        follow = Instruction("Follow the road.", 36, "follow", misleading=True)
        notice = Instruction("Watch out for pedestrians ahead.", 50, "notice")
        half = self.n // 2
        return [
            InstructionSpan(turn, 0, half - 1),
            InstructionSpan(follow, half, self.n - 1),
            InstructionSpan(notice, min(3, self.n - 1), min(3, self.n - 1)),
        ]

    def images(self, i: int) -> dict[str, np.ndarray]:
        if i == self.fail_at:
            raise RuntimeError(f"frame {i} cannot be rendered")
        rng = np.random.default_rng(1000 + i)
        return {v: rng.integers(0, 256, (*self.size, 3), dtype=np.uint8) for v in self.views}

    def _pose(self, i: int) -> tuple[float, float]:
        s = self.speed * i / self.fps
        return 100.0 + s * math.cos(self.heading), -40.0 + s * math.sin(self.heading)

    def measurements(self, i: int) -> Measurements:
        x, y = self._pose(i)
        light = "red" if i < 6 else "green"
        objects = (
            SceneObject("vehicle", 12.5, -3.25, 0.3, 4.5, 2.0, 1.5, vx=1.0, vy=-0.5),
            SceneObject("pedestrian", 6.0, 4.0, -1.2, 0.6, 0.6, 1.8, vx=0.2, vy=0.1),
            SceneObject("traffic_light", 20.0, -6.0, math.pi, 0.5, 0.5, 3.0, state=light),
        )
        span = next(
            s
            for s in self.instructions()
            if s.start_frame <= i <= s.end_frame and s.instruction.category != "notice"
        )
        return Measurements(
            frame=i,
            x=x,
            y=y,
            theta=self.heading,
            speed=self.speed,
            steer=0.01 * i,
            throttle=0.5,
            brake=0.0,
            waypoints=np.array([[self.speed * t, 0.0] for t in WAYPOINT_TIMES], dtype=np.float32),
            light_state=light,
            light_distance=17.5 - 1.5 * i,
            is_junction=i % 4 == 0,
            objects=objects,
            instruction=span.instruction,
            instruction_completed=i == span.end_frame,
            weather="WetNoon",
        )
