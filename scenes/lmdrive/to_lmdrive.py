"""Contract values -> LMDrive's records: one frame's measurements and actors, one instruction."""

from __future__ import annotations

import logging
import math
from itertools import takewhile

from scenes.lmdrive.conventions import (
    ACTOR_TYPES,
    CARLA_LIGHT_OFF,
    CARLA_LIGHT_STATES,
    ROAD_OPTION_LANEFOLLOW,
    WEATHER_NAMES,
    from_ego,
    theta_to_compass,
)
from scenes.lmdrive.instructions import ARG_NAMES
from scenes.lmdrive.layout import LMGD_KEY
from schemas.scene import Instruction, Measurements

log = logging.getLogger(__name__)


def lmdrive_actors(m: Measurements) -> tuple[dict, int]:
    """Objects as actors_data (ids 1..N, CARLA coordinates) and the id of the governing light.

    The governing light is the nearest light ahead whose state is ``m.light_state`` (-1 if none).
    """
    actors, light_id, light_dist = {}, -1, math.inf
    for k, o in enumerate(m.objects, start=1):
        if o.cls not in ACTOR_TYPES:
            log.warning(
                "frame %d: object class %r has no LMDrive type; not written", m.frame, o.cls
            )
            continue
        (dx, dy), (vx, vy) = from_ego([[o.x, o.y], [o.vx, o.vy]], m.theta)
        heading = m.theta + o.yaw
        rec: dict = {
            "loc": [m.x + dx, -(m.y + dy), 0.0],
            "ori": [math.cos(heading), -math.sin(heading), 0.0],
            "vel": [vx, -vy, 0.0],
            "tpe": ACTOR_TYPES.index(o.cls),
        }
        if o.cls == "traffic_light":
            states = CARLA_LIGHT_STATES
            rec["sta"] = states.index(o.state) if o.state in states else CARLA_LIGHT_OFF
            rec.update(
                taigger_loc=[0.0, 0.0, 0.0],
                trigger_ori=rec["ori"],
                trigger_box=[o.length / 2, o.width / 2],
            )
            dist = math.hypot(o.x, o.y)
            if o.state == m.light_state and o.x > 0 and dist < light_dist:
                light_id, light_dist = k, dist
        else:
            rec["box"] = [o.length / 2, o.width / 2]
        actors[str(k)] = rec
    return actors, light_id


def lmdrive_measurements(m: Measurements, light_id: int) -> dict:
    """LMDrive's measurement keys for ``m``, plus ``lmgd`` (the exact contract dict).

    Stand-ins where the contract has no equivalent: ``future_waypoints`` are the 4 contract
    waypoints (not the planner's route), ``x_command``/``far_node`` the last and ``near_node``
    the first of them, ``command`` LANEFOLLOW, ``target_speed`` the current speed. The CARLA
    ``weather`` parameter dict is not written (``weather_id`` is, -1 for non-CARLA weathers).
    """
    wps = from_ego(m.waypoints, m.theta) + (m.x, m.y)
    future = [[float(n), float(e), ROAD_OPTION_LANEFOLLOW] for e, n in wps]  # gps: north, east
    near, far = future[0], future[-1]
    brake_light = light_id != -1 and m.light_state in ("red", "yellow")
    return {
        "gps_x": m.y, "gps_y": m.x, "x": m.x, "y": -m.y, "theta": theta_to_compass(m.theta),
        "speed": m.speed, "target_speed": m.speed, "steer": m.steer, "throttle": m.throttle,
        "brake": m.brake, "command": ROAD_OPTION_LANEFOLLOW, "gt_command": ROAD_OPTION_LANEFOLLOW,
        "x_command": far[0], "y_command": far[1], "far_node_x": far[0], "far_node_y": far[1],
        "near_node_x": near[0], "near_node_y": near[1], "future_waypoints": future,
        "weather_id": WEATHER_NAMES.index(m.weather) if m.weather in WEATHER_NAMES else -1,
        "is_junction": m.is_junction, "affected_light_id": light_id,
        "should_slow": 0, "should_brake": int(m.brake > 0),
        "is_red_light_present": [light_id] if brake_light else [],
        "is_vehicle_present": [], "is_bike_present": [], "is_lane_vehicle_present": [],
        "is_junction_vehicle_present": [], "is_pedestrian_present": [], "is_stop_sign_present": [],
        LMGD_KEY: m.to_dict(),
    }  # fmt: skip


def instruction_fields(ins: Instruction) -> dict:
    """LMDrive's instruction keys (rule name = category) plus our exact ``text``, ``category``
    and ``args``."""
    return {
        "instruction": ins.category.capitalize(),
        "instruction_id": ins.instruction_id,
        "instruction_args": [ins.args[k] for k in takewhile(lambda k: k in ins.args, ARG_NAMES)],
        "bad_case": str(ins.misleading),
        "text": ins.text,
        "category": ins.category,
        "args": ins.args,
    }
