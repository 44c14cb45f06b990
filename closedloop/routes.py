"""Closed-loop routes: what a route is (:class:`RouteSpec`), reading route files, building a
drivable route in its town, and drawing benchmark routes for the three tracks.

A route leaves junction ``start`` heading ``heading``, takes ``turns`` at the junctions it meets
and ends :data:`GOAL_AFTER_M` past the last one. Tracks split routes by length, as LangAuto does
(long / short / tiny), with lengths scaled to our towns (5 x 5 junctions, 55-85 m apart): see
:data:`TRACKS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from driving.leaderboard import route_timeout
from scenes.procedural.instructions import TYPE_BY_ID
from scenes.procedural.routes import Route
from scenes.procedural.signals import cycle_length
from scenes.procedural.town import Town, make_town, turn_between
from schemas.errors import BadInputError
from schemas.scene import TURNS, WEATHERS
from schemas.user_yaml import read_yaml

HEADINGS = ("east", "north", "west", "south")  # the town's direction index k
TURN_OF_TYPE = {
    "turn_left": "left",
    "turn_right": "right",
    "go_straight": "straight",
    "turn_left_dist": "left",
    "turn_right_dist": "right",
    "go_straight_dist": "straight",
}
START_S = 6.0  # metres into the first lane the car starts, at rest
GOAL_AFTER_M = 20.0  # the goal lies this far past the last junction's box
# LangAuto: tiny < 150 m, short 150-500 m, long > 500 m on CARLA towns; ours, a third of that, on
# towns about 300 m across (LangAuto's long routes would cross ours several times)
TRACKS: dict[str, tuple[float, float]] = {
    "tiny": (40.0, 100.0),
    "short": (100.0, 200.0),
    "long": (200.0, 320.0),
}
MAX_START_SPEED = 8.0  # m/s, the expert's cruising speed
FIRST_TOWN = 971  # closed-loop towns: no recipe trains on them, no other bench uses them
TOWNS = 30


@dataclass(frozen=True)
class RouteSpec:
    """One route: the town's seed, the junction it leaves and how, the turns, the weather and the
    seed of its traffic."""

    route_id: str
    town: int
    start: tuple[int, int]
    heading: str
    turns: tuple[str, ...]
    weather: str = "clear_noon"
    seed: int = 0
    start_speed: float = 0.0  # m/s; CARLA starts every route at rest

    def to_dict(self) -> dict:
        return {**asdict(self), "start": list(self.start), "turns": list(self.turns)}


@dataclass
class BuiltRoute:
    """A route in its town: the path (extended past the goal so driving on never runs out), the
    arc lengths of the start and the goal."""

    spec: RouteSpec
    town: Town
    route: Route
    s_start: float
    s_goal: float

    @property
    def length(self) -> float:
        return self.s_goal - self.s_start

    def time_allowed(self) -> float:
        """Seconds before the route times out: the leaderboard's 0.4 s per metre, plus one full
        signal cycle per signalised junction on it. Our signal cycles are as long as CARLA's
        (30-44 s) but our routes a third of LangAuto's, so 0.4 s/m alone times the expert out
        waiting at one red light."""
        junctions = self.route.maneuvers[: len(self.spec.turns)]
        waits = sum(
            cycle_length(len(self.town.arms(m.node)))
            for m in junctions
            if self.town.has_light(m.node)
        )
        return route_timeout(self.length) + waits


def build_route(spec: RouteSpec, town: Town | None = None) -> BuiltRoute:
    """The route of ``spec``; :class:`BadInputError` when it cannot be driven (no road that way, a
    turn the junction does not have), naming the route, the junction and what it has."""
    town = town or make_town(spec.town)
    where = f"route {spec.route_id!r} (town {spec.town})"
    nx, ny = town.shape
    if not (0 <= spec.start[0] < nx and 0 <= spec.start[1] < ny):
        raise BadInputError(
            f"{where}: start junction {list(spec.start)} is not in the town; valid: "
            f"[0..{nx - 1}, 0..{ny - 1}]"
        )
    if spec.heading not in HEADINGS:
        raise BadInputError(f"{where}: heading {spec.heading!r}; valid: {', '.join(HEADINGS)}")
    k = HEADINGS.index(spec.heading)
    if k not in town.arms(spec.start):
        have = [HEADINGS[a] for a in town.arms(spec.start)]
        raise BadInputError(
            f"{where}: no road leaves junction {list(spec.start)} heading {spec.heading}; "
            f"roads leave it heading {', '.join(have)}"
        )
    if not spec.turns:
        raise BadInputError(f"{where}: turns is empty; a route passes at least one junction")
    node, k_in = town.neighbour(spec.start, k), k
    for i, turn in enumerate(spec.turns):
        feasible = town.turns(node, k_in)
        if turn not in feasible:
            raise BadInputError(
                f"{where}: no path to the goal: turn {i + 1} ({turn!r}) at junction {list(node)} "
                f"is not possible; that junction allows {', '.join(feasible)}"
            )
        k_in = next(e for e in town.exits(node, k_in) if turn_between(k_in, e) == turn)
        node = town.neighbour(node, k_in)
    wanted = list(spec.turns)

    def choose(node, k_in, options):
        names = {turn_between(k_in, e): e for e in options}
        if wanted:
            return names[wanted.pop(0)]
        return names.get("straight", options[0])  # past the goal: drive on

    route = Route(town, spec.start, k, choose)
    while len(route.maneuvers) < len(spec.turns):
        route.ensure(route.path.length)
    s_goal = route.maneuvers[len(spec.turns) - 1].s_exit + GOAL_AFTER_M
    return BuiltRoute(spec, town, route, START_S, s_goal)


def track_of(length_m: float) -> str | None:
    """The track a route of that length belongs to, or None."""
    return next((t for t, (lo, hi) in TRACKS.items() if lo <= length_m < hi), None)


def sample_routes(
    track: str, n: int, seed: int, towns: Sequence[int] | None = None
) -> list[RouteSpec]:
    """``n`` routes of ``track`` on the closed-loop towns (or ``towns``, cycled), weathers cycled,
    drawn from ``seed`` (the same arguments give the same routes)."""
    if track not in TRACKS:
        raise BadInputError(f"unknown track {track!r}; valid: {', '.join(TRACKS)}")
    rng = np.random.default_rng([seed, 7301, list(TRACKS).index(track)])
    lo, hi = TRACKS[track]
    made: dict[int, Town] = {}
    out: list[RouteSpec] = []
    while len(out) < n:
        town_seed = FIRST_TOWN + len(out) % TOWNS if towns is None else towns[len(out) % len(towns)]
        town = made.setdefault(town_seed, make_town(town_seed))
        start = town.nodes[rng.integers(len(town.nodes))]
        arms = town.arms(start)
        k = int(arms[rng.integers(len(arms))])
        node, k_in, turns, length = town.neighbour(start, k), k, [], None
        while True:
            feasible = town.turns(node, k_in)
            weights = np.array([0.4 if t == "straight" else 0.3 for t in feasible])
            turn = feasible[rng.choice(len(feasible), p=weights / weights.sum())]
            turns.append(turn)
            k_in = next(e for e in town.exits(node, k_in) if turn_between(k_in, e) == turn)
            node = town.neighbour(node, k_in)
            spec = RouteSpec(
                f"{track}-{len(out):03d}",
                town_seed,
                start,
                HEADINGS[k],
                tuple(turns),
                WEATHERS[len(out) % len(WEATHERS)],
                int(rng.integers(1 << 31)),
            )
            length = build_route(spec, town).length
            if length >= lo:
                break
        if length < hi:
            out.append(spec)
    return out


def read_routes(path: str | Path) -> list[RouteSpec]:
    """Routes from a YAML file: ``routes:`` a list of mappings with the :class:`RouteSpec` keys
    (``start: [i, j]``); each is checked to be drivable. :class:`BadInputError` names the file,
    the route and the key."""
    data = read_yaml(path, "route file")
    if not isinstance(data, dict) or not isinstance(data.get("routes"), list) or not data["routes"]:
        raise BadInputError(f"{path}: expected a mapping with a non-empty list 'routes'")
    keys = ("route_id", "town", "start", "heading", "turns", "weather", "seed", "start_speed")
    specs, seen = [], set()
    for i, row in enumerate(data["routes"]):
        where = f"{path}: routes[{i}]"
        if not isinstance(row, dict):
            raise BadInputError(f"{where}: expected a mapping with keys {', '.join(keys)}")
        unknown = sorted(set(row) - set(keys))
        missing = [k for k in ("route_id", "town", "start", "heading", "turns") if k not in row]
        if unknown or missing:
            raise BadInputError(
                f"{where}: unknown key(s) {unknown}, missing {missing}; valid: {', '.join(keys)}"
            )
        start, turns = row["start"], row["turns"]
        if not (isinstance(start, list) and len(start) == 2 and all(_is_int(v) for v in start)):
            raise BadInputError(f"{where}.start: expected [i, j] junction indices, got {start!r}")
        if not isinstance(turns, list):
            raise BadInputError(f"{where}.turns: expected a list of turns")
        turns = [_turn(t, f"{where}.turns[{k}]") for k, t in enumerate(turns)]
        weather = row.get("weather", "clear_noon")
        if weather not in WEATHERS:
            raise BadInputError(f"{where}.weather: {weather!r}; valid: {', '.join(WEATHERS)}")
        for key in ("town", "seed"):
            if not _is_int(row.get(key, 0)):
                raise BadInputError(f"{where}.{key}: expected an integer, got {row[key]!r}")
        start_speed = row.get("start_speed", 0.0)
        if not isinstance(start_speed, int | float) or not 0.0 <= start_speed <= MAX_START_SPEED:
            raise BadInputError(
                f"{where}.start_speed: expected m/s in 0..{MAX_START_SPEED:g}, got {start_speed!r}"
            )
        spec = RouteSpec(
            str(row["route_id"]),
            int(row["town"]),
            (int(start[0]), int(start[1])),
            str(row["heading"]),
            tuple(turns),
            weather,
            int(row.get("seed", 0)),
            float(start_speed),
        )
        if spec.route_id in seen:
            raise BadInputError(f"{where}.route_id: {spec.route_id!r} appears twice")
        seen.add(spec.route_id)
        try:
            build_route(spec)
        except BadInputError as e:
            raise BadInputError(f"{where}: {e}") from None
        specs.append(spec)
    return specs


def _turn(value: object, where: str) -> str:
    """A turn given by name or by a LangAuto turn instruction id (as route files of LangAuto
    name them)."""
    if isinstance(value, str) and value in TURNS:
        return value
    if _is_int(value) and TYPE_BY_ID.get(value) in TURN_OF_TYPE:
        return TURN_OF_TYPE[TYPE_BY_ID[value]]
    ids = ", ".join(
        f"{i} ({TYPE_BY_ID[i]})" for i in sorted(TYPE_BY_ID) if TYPE_BY_ID[i] in TURN_OF_TYPE
    )
    if not _is_int(value):
        what = f"unknown turn {value!r}"
    elif value in TYPE_BY_ID:
        what = f"instruction id {value} ({TYPE_BY_ID[value]}) is not a turn"
    else:
        what = f"unknown instruction id {value}"
    raise BadInputError(f"{where}: {what}; valid: {', '.join(TURNS)} or ids {ids}")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
