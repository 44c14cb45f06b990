"""Driving one route in closed loop and scoring it as the CARLA leaderboard does.

Per recorded frame (10 Hz): the world ticks (recording the frame, moving everything with the
control held from the last frame), the route's monitor checks for an early end, the schedule
shows the frame's instruction, the renderer draws the three views (for agents that see), the
agent returns its control, and the world ticks again with it (20 Hz physics). The drive ends at
the goal or at the leaderboard's first termination; then its collisions (vehicles, pedestrians,
static objects), red lights and driving outside the lanes are scored with
:func:`driving.leaderboard.score_route`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from closedloop.agents import Observation
from closedloop.langauto import InstructionSchedule, Issued
from closedloop.routes import BuiltRoute, track_of
from driving.control import Control
from driving.leaderboard import Event, RouteScore, count_collisions, score_route
from scenes.procedural import props
from scenes.procedural.drive import ground_of_town
from scenes.procedural.infractions import (
    RouteMonitor,
    collisions,
    outside_lanes_percent,
    red_lights,
    static_collisions,
)
from scenes.procedural.render import Renderer
from scenes.procedural.weather import get_weather
from scenes.procedural.world import DriveLog, FrameState, World

COAST = Control(throttle=0.0, brake=0.0, steer=0.0)  # before an agent's first control


@dataclass
class RouteResult:
    """One driven route: its score, what happened, and how long the parts of the loop took."""

    route_id: str
    agent: str
    track: str | None
    length_m: float
    score: RouteScore
    events: list[Event]
    outside_lanes_percent: float
    log: DriveLog
    issued: list[Issued]
    frames: int
    start_speed: float = 0.0
    render_s: float = 0.0
    act_s: float = 0.0
    world_s: float = 0.0
    act_frames: list[float] = field(default_factory=list)  # seconds per act() call

    def row(self) -> dict:
        """A flat record for tables (no log)."""
        s = self.score
        return {
            "route_id": self.route_id,
            "agent": self.agent,
            "track": self.track,
            "length_m": round(self.length_m, 1),
            "start_speed": self.start_speed,
            "ds": s.ds,
            "rc": s.rc,
            "is": s.infraction_score,
            "ended_by": s.ended_by or "completed",
            "outside_lanes_percent": self.outside_lanes_percent,
            **{f"n_{k}": v for k, v in sorted(s.counts.items())},
            "frames": self.frames,
            "loop_s": self.render_s + self.act_s + self.world_s,
            "act_ms_median": 1000 * float(np.median(self.act_frames)) if self.act_frames else 0.0,
            "path": [
                [round(float(f.ego[0]), 2), round(float(f.ego[1]), 2)]
                for f in self.log.frames[::5] + self.log.frames[-1:]
            ],
            "events": [  # as scored: one per collision, not one per frame of contact
                [e.kind, round(e.x, 2), round(e.y, 2)] for e in count_collisions(self.events)
            ],
        }


def drive_route(
    built: BuiltRoute,
    agent,
    image_size: tuple[int, int] = (64, 64),
    on_frame: Callable[[int, dict | None, FrameState], None] | None = None,
) -> RouteResult:
    """Drive ``built`` with ``agent`` (see :mod:`closedloop.agents`) and score it.
    ``on_frame(frame, images, state)`` sees every frame (images only for agents that see)."""
    spec, town = built.spec, built.town
    world = World(town, spec.seed, route=(built.route, built.s_start), start_speed=spec.start_speed)
    agent.reset(world, spec.seed)
    schedule = InstructionSchedule(built, np.random.default_rng([spec.seed, 1201]))
    monitor = RouteMonitor(built.route.path, built.time_allowed())
    renderer = (
        Renderer(
            town,
            ground_of_town(spec.town),
            get_weather(spec.weather),
            image_size,
            center=getattr(agent, "sees_center", False),
        )
        if agent.needs_images
        else None
    )
    control = None if agent.privileged else COAST
    end: Event | None = None
    timings = {"render": 0.0, "act": 0.0, "world": 0.0}
    act_frames: list[float] = []
    frame = 0
    while True:
        t0 = time.perf_counter()
        world.tick(control=control)
        f = world.log.frames[-1]
        timings["world"] += time.perf_counter() - t0
        if f.ego_s >= built.s_goal:
            break
        end = monitor.update(f)
        if end is not None:
            break
        instruction = schedule.update(frame, f)
        t0 = time.perf_counter()
        images = (
            renderer.render(f, world.log.vehicle_colors, world.log.pedestrian_colors, frame)
            if renderer is not None
            else None
        )
        t1 = time.perf_counter()
        obs = Observation(
            frame, images, float(f.ego[3]), tuple(float(v) for v in f.ego[:3]), instruction
        )
        control = agent.act(obs)
        t2 = time.perf_counter()
        timings["render"] += t1 - t0
        timings["act"] += t2 - t1
        act_frames.append(t2 - t1)
        if on_frame is not None:
            on_frame(frame, images, f)
        world.tick(control=control)
        timings["world"] += time.perf_counter() - t2
        frame += 1
    log = world.log
    reached = min(log.frames[-1].ego_s, built.s_goal) - built.s_start
    completed = float(np.clip(100.0 * reached / built.length, 0.0, 100.0))
    static, _ = props.static_props(town)
    events = collisions(log) + static_collisions(log, static) + red_lights(log)
    events += [end] if end is not None else []
    outside = outside_lanes_percent(log, built.length)
    return RouteResult(
        route_id=spec.route_id,
        agent=agent.name,
        track=track_of(built.length),
        length_m=built.length,
        score=score_route(completed, events, outside),
        events=sorted(events, key=lambda e: e.t),
        outside_lanes_percent=outside,
        log=log,
        issued=schedule.issued,
        frames=frame,
        start_speed=spec.start_speed,
        render_s=timings["render"],
        act_s=timings["act"],
        world_s=timings["world"],
        act_frames=act_frames,
    )
