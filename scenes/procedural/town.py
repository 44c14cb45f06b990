"""A deterministic town from a seed: a grid of two-lane roads, junctions, lights, buildings, trees.

Right-hand traffic. Nodes sit on an irregular grid; every pair of neighbouring nodes is joined by
a road with one lane each way. Junctions with three or more arms have traffic lights, stop lines
and zebra crossings. Blocks between the roads (and a ring of blocks around the town) are split
into lots holding buildings or small parks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from scenes.procedural.geometry import DIRECTIONS, arc, line, right_of

LANE_OFFSET = 1.75  # lane centre from road centre
ROAD_HALF = 3.5
SIDEWALK_OUTER = 6.5  # sidewalk outer edge from road centre
BOX = 7.0  # junction half-size: turns happen inside it
CROSSWALK = (7.0, 10.0)  # zebra crossing spans these distances from the junction centre
STOP_LINE = 10.5  # distance of the stop line from the junction centre
MARGIN = 45.0  # ring of blocks around the outermost roads

TURN_NAMES = {0: "straight", 1: "left", 3: "right"}


@dataclass
class Building:
    cx: float
    cy: float
    hx: float
    hy: float
    height: float
    color: tuple[int, int, int]
    window_color: tuple[int, int, int]
    lit_share: float  # share of windows lit at night


@dataclass
class Town:
    """Grid geometry plus the static scenery of one town."""

    seed: int
    xs: np.ndarray
    ys: np.ndarray
    light_offset: np.ndarray  # (nx, ny) seconds into the signal cycle at t=0
    buildings: list[Building] = field(default_factory=list)
    trees: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # x, y, canopy radius
    lots_park: list[tuple[float, float, float, float]] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.xs), len(self.ys)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return (
            self.xs[0] - MARGIN,
            self.ys[0] - MARGIN,
            self.xs[-1] + MARGIN,
            self.ys[-1] + MARGIN,
        )

    def in_junction_box(self, x: float, y: float) -> bool:
        """Whether (``x``, ``y``) lies in a junction box (where turns happen, no lane to keep)."""
        return bool(np.min(np.abs(self.xs - x)) < BOX and np.min(np.abs(self.ys - y)) < BOX)

    def is_corner_box(self, x: float, y: float) -> bool:
        """Whether (``x``, ``y``) lies in the box of a corner (a node with two arms, where the
        road bends and there is one way on: its lane is still the one to keep)."""
        i, j = int(np.argmin(np.abs(self.xs - x))), int(np.argmin(np.abs(self.ys - y)))
        return self.in_junction_box(x, y) and len(self.arms((i, j))) == 2

    def node_xy(self, node: tuple[int, int]) -> np.ndarray:
        return np.array([self.xs[node[0]], self.ys[node[1]]])

    def neighbour(self, node: tuple[int, int], k: int) -> tuple[int, int] | None:
        i, j = node[0] + int(DIRECTIONS[k][0]), node[1] + int(DIRECTIONS[k][1])
        nx, ny = self.shape
        return (i, j) if 0 <= i < nx and 0 <= j < ny else None

    def arms(self, node: tuple[int, int]) -> list[int]:
        """Directions (0=E, 1=N, 2=W, 3=S) in which a road leaves ``node``."""
        return self._arms[node]

    @cached_property
    def _arms(self) -> dict[tuple[int, int], list[int]]:
        return {n: [k for k in range(4) if self.neighbour(n, k) is not None] for n in self.nodes}

    def exits(self, node: tuple[int, int], k_in: int) -> list[int]:
        """Directions a vehicle arriving at ``node`` heading ``k_in`` may leave by: every arm but
        the one it came in on (no U-turns)."""
        return [k for k in self.arms(node) if (k - k_in) % 4 != 2]

    def turns(self, node: tuple[int, int], k_in: int) -> list[str]:
        """The feasible turns ('straight', 'left', 'right') there, in the order of :meth:`exits`."""
        return [turn_between(k_in, k) for k in self.exits(node, k_in)]

    def has_light(self, node: tuple[int, int]) -> bool:
        return len(self.arms(node)) >= 3

    @cached_property
    def nodes(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(len(self.xs)) for j in range(len(self.ys))]

    def lane(self, node: tuple[int, int], k: int) -> np.ndarray:
        """Centre line of the lane leaving ``node`` in direction ``k`` up to the next junction
        box."""
        d = DIRECTIONS[k]
        r = right_of(d)
        b = self.neighbour(node, k)
        if b is None:
            raise ValueError(f"no road from node {node} towards direction {k}")
        start = self.node_xy(node) + d * BOX + r * LANE_OFFSET
        end = self.node_xy(b) - d * BOX + r * LANE_OFFSET
        return line(start, end)

    def connector(self, node: tuple[int, int], k_in: int, k_out: int) -> np.ndarray:
        """Path through the junction box from travel direction ``k_in`` to ``k_out``."""
        n = self.node_xy(node)
        d_in, d_out = DIRECTIONS[k_in], DIRECTIONS[k_out]
        start = n - d_in * BOX + right_of(d_in) * LANE_OFFSET
        end = n + d_out * BOX + right_of(d_out) * LANE_OFFSET
        turn = (k_out - k_in) % 4
        if turn == 0:
            return line(start, end)
        if turn == 3:  # right
            return arc(n - d_in * BOX + right_of(d_in) * BOX, start, end, ccw=False)
        if turn == 1:  # left
            return arc(n - d_in * BOX - right_of(d_in) * BOX, start, end, ccw=True)
        raise ValueError("U-turns are not part of the road network")

    def light_heads(self) -> list[tuple[tuple[int, int], int, np.ndarray]]:
        """(node, approach travel direction, head position) for every signal head."""
        heads = []
        for node in self.nodes:
            if not self.has_light(node):
                continue
            for arm in self.arms(node):
                k = (arm + 2) % 4  # vehicles arriving from ``arm`` travel towards the node
                d = DIRECTIONS[k]
                heads.append(
                    (node, k, self.node_xy(node) + d * (BOX + 1.0) + right_of(d) * LANE_OFFSET)
                )
        return heads


def make_town(seed: int, size: tuple[int, int] = (5, 5)) -> Town:
    """Build the town for ``seed``: node spacing, lights, lots, buildings and trees."""
    rng = np.random.default_rng([seed, 7001])
    nx, ny = size
    xs = np.concatenate([[0.0], np.cumsum(rng.uniform(55.0, 85.0, nx - 1))])
    ys = np.concatenate([[0.0], np.cumsum(rng.uniform(55.0, 85.0, ny - 1))])
    town = Town(seed=seed, xs=xs, ys=ys, light_offset=rng.uniform(0.0, 100.0, (nx, ny)))
    _place_lots(town, rng)
    return town


_FACADES = [
    (196, 178, 150),
    (170, 96, 76),
    (150, 150, 152),
    (214, 208, 196),
    (128, 104, 84),
    (184, 160, 120),
    (110, 118, 128),
    (200, 186, 168),
    (160, 120, 100),
    (94, 100, 96),
]


def _place_lots(town: Town, rng: np.random.Generator) -> None:
    x0, y0, x1, y1 = town.bounds
    xe = np.concatenate([[x0], town.xs, [x1]])
    ye = np.concatenate([[y0], town.ys, [y1]])
    trees: list[tuple[float, float, float]] = []
    for i in range(len(xe) - 1):
        for j in range(len(ye) - 1):
            bx0 = xe[i] + (SIDEWALK_OUTER if i > 0 else 0.0)
            bx1 = xe[i + 1] - (SIDEWALK_OUTER if i < len(xe) - 2 else 0.0)
            by0 = ye[j] + (SIDEWALK_OUTER if j > 0 else 0.0)
            by1 = ye[j + 1] - (SIDEWALK_OUTER if j < len(ye) - 2 else 0.0)
            for lot in _split(bx0, by0, bx1, by1, rng):
                _fill_lot(town, lot, rng, trees)
    for axis, centres, others in ((0, town.xs, town.ys), (1, town.ys, town.xs)):  # street trees
        for c in others:
            for side in (-1, 1):
                for v in np.arange(centres[0] + 14, centres[-1] - 10, 11.0):
                    if rng.random() < 0.35 and _far_from_junctions(v, centres):
                        p = (v, c + side * 5.9) if axis == 0 else (c + side * 5.9, v)
                        trees.append((p[0], p[1], rng.uniform(1.2, 1.8)))
    town.trees = np.array(trees, dtype=np.float64).reshape(-1, 3)


def _far_from_junctions(v: float, centres: np.ndarray) -> bool:
    return bool(np.min(np.abs(centres - v)) > 13.0)


def _split(
    x0: float, y0: float, x1: float, y1: float, rng: np.random.Generator, max_side: float = 28.0
):
    w, h = x1 - x0, y1 - y0
    if w < 6 or h < 6:
        return []
    if max(w, h) <= max_side:
        return [(x0, y0, x1, y1)]
    t = rng.uniform(0.35, 0.65)
    if w >= h:
        xm = x0 + w * t
        return _split(x0, y0, xm, y1, rng, max_side) + _split(xm, y0, x1, y1, rng, max_side)
    ym = y0 + h * t
    return _split(x0, y0, x1, ym, rng, max_side) + _split(x0, ym, x1, y1, rng, max_side)


def _fill_lot(town: Town, lot, rng: np.random.Generator, trees: list) -> None:
    x0, y0, x1, y1 = lot
    if rng.random() < 0.12:
        town.lots_park.append(lot)
        for _ in range(int((x1 - x0) * (y1 - y0) / 60)):
            trees.append(
                (rng.uniform(x0 + 2, x1 - 2), rng.uniform(y0 + 2, y1 - 2), rng.uniform(1.5, 2.6))
            )
        return
    inset = rng.uniform(0.3, 1.8, 4)
    bx0, by0, bx1, by1 = x0 + inset[0], y0 + inset[1], x1 - inset[2], y1 - inset[3]
    if bx1 - bx0 < 4 or by1 - by0 < 4:
        return
    base = np.array(_FACADES[rng.integers(len(_FACADES))], dtype=np.float64)
    color = tuple(int(c) for c in np.clip(base * rng.uniform(0.85, 1.1), 0, 255))
    glass = tuple(int(c) for c in rng.choice([(60, 74, 92), (48, 56, 66), (80, 96, 110)]))
    town.buildings.append(
        Building(
            cx=(bx0 + bx1) / 2,
            cy=(by0 + by1) / 2,
            hx=(bx1 - bx0) / 2,
            hy=(by1 - by0) / 2,
            height=float(np.exp(rng.uniform(np.log(6.0), np.log(34.0)))),
            color=color,
            window_color=glass,
            lit_share=float(rng.uniform(0.2, 0.7)),
        )
    )


def turn_between(k_in: int, k_out: int) -> str:
    """'straight', 'left' or 'right' for travel directions ``k_in`` -> ``k_out``."""
    return TURN_NAMES[(k_out - k_in) % 4]
