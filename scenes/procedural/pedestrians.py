"""Pedestrians walking the sidewalk network and crossing at zebra crossings on the walk signal."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scenes.procedural.geometry import DIRECTIONS, Polyline, right_of
from scenes.procedural.signals import may_start_crossing
from scenes.procedural.town import CROSSWALK, Town

CORNER = 5.0  # sidewalk centre line from the road centre
CROSS_AT = (CROSSWALK[0] + CROSSWALK[1]) / 2


@dataclass
class Walkway:
    """An undirected sidewalk or crossing edge between two corner points."""

    path: Polyline
    ends: tuple[int, int]  # corner ids at s=0 and s=length
    crossing: tuple[int, int] | None = None  # junction whose signal governs the crossing
    cross_span: tuple[float, float] = (0.0, 0.0)


@dataclass
class Pedestrian:
    edge: int
    forward: bool
    s: float
    speed: float
    offset: np.ndarray
    color: tuple[int, int, int]
    waiting: bool = False
    crossing_allowed: bool = False


def build_walkways(town: Town) -> tuple[list[Walkway], dict[int, list[int]]]:
    """Sidewalk and crossing edges, and for every corner the edges touching it."""
    corner_id: dict[tuple, int] = {}

    def corner(node, sx, sy) -> int:
        return corner_id.setdefault((node, sx, sy), len(corner_id))

    def corner_xy(node, sx, sy) -> np.ndarray:
        return town.node_xy(node) + CORNER * np.array([sx, sy], dtype=np.float64)

    edges: list[Walkway] = []

    def add(points, a, b, crossing=None, span=(0.0, 0.0)):
        edges.append(
            Walkway(Polyline(np.asarray(points, dtype=np.float64)), (a, b), crossing, span)
        )

    for node in town.nodes:
        arms = town.arms(node)
        for k in range(4):
            d = DIRECTIONS[k]
            r = right_of(d)
            qa = tuple(int(v) for v in np.sign(d + r))
            qb = tuple(int(v) for v in np.sign(d - r))
            pa, pb = corner_xy(node, *qa), corner_xy(node, *qb)
            if k not in arms:
                add([pa, pb], corner(node, *qa), corner(node, *qb))
                continue
            if k in (0, 1):  # sidewalks along the road to the neighbour, once per road
                m = town.neighbour(node, k)
                for q in (qa, qb):
                    q_far = tuple(
                        int(v) for v in np.array(q) - 2 * np.abs(d).astype(int) * np.array(q)
                    )
                    add(
                        [corner_xy(node, *q), corner_xy(m, *q_far)],
                        corner(node, *q),
                        corner(m, *q_far),
                    )
            if town.has_light(node):
                n = town.node_xy(node)
                pts = [pa, n + CROSS_AT * d + CORNER * r, n + CROSS_AT * d - CORNER * r, pb]
                lead = CROSS_AT - CORNER
                add(
                    pts,
                    corner(node, *qa),
                    corner(node, *qb),
                    crossing=node,
                    span=(lead, lead + 2 * CORNER),
                )
    touching: dict[int, list[int]] = {}
    for i, e in enumerate(edges):
        for c in e.ends:
            touching.setdefault(c, []).append(i)
    return edges, touching


class Crowd:
    """All pedestrians of a town."""

    def __init__(self, town: Town, rng: np.random.Generator, count: int):
        self.town, self.rng = town, rng
        self.edges, self.touching = build_walkways(town)
        sidewalks = [i for i, e in enumerate(self.edges) if e.crossing is None]
        palette = [
            (200, 40, 40),
            (40, 80, 170),
            (230, 190, 40),
            (240, 240, 235),
            (40, 140, 70),
            (120, 60, 140),
            (230, 120, 40),
            (30, 30, 34),
        ]
        self.people = [
            Pedestrian(
                edge=int(e),
                forward=bool(rng.random() < 0.5),
                s=float(rng.uniform(0, self.edges[e].path.length)),
                speed=float(rng.uniform(1.2, 1.6)),
                offset=rng.uniform(-0.6, 0.6, 2),
                color=palette[rng.integers(len(palette))],
            )
            for e in rng.choice(sidewalks, size=count)
        ]

    def positions(self) -> np.ndarray:
        return np.array([self._xy(p) for p in self.people]).reshape(-1, 2)

    def velocities(self) -> np.ndarray:
        out = []
        for p in self.people:
            if p.waiting:
                out.append((0.0, 0.0))
                continue
            path = self.edges[p.edge].path
            s = p.s if p.forward else path.length - p.s
            h = path.heading(s) + (0.0 if p.forward else np.pi)
            out.append((p.speed * np.cos(h), p.speed * np.sin(h)))
        return np.array(out).reshape(-1, 2)

    def headings(self) -> np.ndarray:
        v = self.velocities()
        return np.arctan2(v[:, 1], v[:, 0])

    def _xy(self, p: Pedestrian) -> np.ndarray:
        path = self.edges[p.edge].path
        return path.point(p.s if p.forward else path.length - p.s) + p.offset

    def step(self, dt: float, t: float, vehicle_xy: np.ndarray) -> None:
        for p in self.people:
            edge = self.edges[p.edge]
            s_new = p.s + p.speed * dt
            if edge.crossing is not None and not p.crossing_allowed and s_new >= edge.cross_span[0]:
                if may_start_crossing(self.town, edge.crossing, t) and self._crossing_clear(
                    edge, vehicle_xy
                ):
                    p.crossing_allowed, p.waiting = True, False
                else:
                    p.s, p.waiting = edge.cross_span[0], True
                    continue
            p.s = s_new
            if p.s >= edge.path.length:
                self._next_edge(p)

    def _crossing_clear(self, edge: Walkway, vehicle_xy: np.ndarray) -> bool:
        a, b = edge.path.at(edge.cross_span[0]), edge.path.at(edge.cross_span[1])
        centre, along = (a + b) / 2, (b - a) / np.linalg.norm(b - a)
        rel = vehicle_xy - centre
        across = np.abs(rel @ np.array([along[1], -along[0]]))
        return not bool(np.any((across < 4.0) & (np.abs(rel @ along) < 6.0)))

    def _next_edge(self, p: Pedestrian) -> None:
        edge = self.edges[p.edge]
        here = edge.ends[1] if p.forward else edge.ends[0]
        options = [e for e in self.touching[here] if e != p.edge] or [p.edge]
        nxt = int(options[self.rng.integers(len(options))])
        p.edge, p.forward, p.s = nxt, self.edges[nxt].ends[0] == here, 0.0
        p.crossing_allowed, p.waiting = False, False
