"""Everything that stands on the ground, as boxes and spheres in world coordinates.

Buildings, tree trunks and signal masts never move and are built once; vehicles, pedestrians and
lamp colours are rebuilt every frame from the simulation state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from driving.vehicle import VEHICLE_SIZE
from scenes.procedural.geometry import DIRECTIONS, right_of
from scenes.procedural.town import Town

LAMP_COLORS = {"red": (255, 50, 36), "yellow": (255, 196, 40), "green": (70, 255, 130)}
LAMP_OFF = (38, 38, 38)
LAMP_ORDER = ("red", "yellow", "green")
# The painter's lead of a lamp over its housing: the housing's nearest point is up to its height
# (1.8 m) nearer than a lamp's (the bottom edge, seen from below), which hid the red and yellow
# lamps behind their own housing at every distance (drive version 5 draws them)
LAMP_LEAD = 2.0
SKIN = (198, 150, 120)


@dataclass
class Boxes:
    """Oriented boxes: footprint centre, half extents, yaw, vertical span, side and top colours."""

    cx: np.ndarray
    cy: np.ndarray
    hx: np.ndarray
    hy: np.ndarray
    yaw: np.ndarray
    z0: np.ndarray
    z1: np.ndarray
    color: np.ndarray  # (B, 3) float32
    top: np.ndarray  # (B, 3) float32
    emissive: np.ndarray  # (B,) bool: drawn at full brightness, never shaded
    building: np.ndarray  # (B,) int: index into the town's buildings, -1 otherwise
    # (B,) float: metres nearer than it is the painter draws the box while its front (-x) face
    # faces the camera: a lamp on its housing's face, whose own nearest point may lie farther
    lead: np.ndarray

    def __len__(self) -> int:
        return len(self.cx)

    @staticmethod
    def of(rows: list[tuple], lead: float = 0.0) -> Boxes:
        """From rows ``(cx, cy, hx, hy, yaw, z0, z1, color, top, emissive, building)``, each drawn
        ``lead`` metres nearer while its front faces the camera."""
        rows_arr = [[] for _ in range(11)] if not rows else list(zip(*rows, strict=True))
        f = np.asarray
        return Boxes(
            cx=f(rows_arr[0], np.float64),
            cy=f(rows_arr[1], np.float64),
            hx=f(rows_arr[2], np.float64),
            hy=f(rows_arr[3], np.float64),
            yaw=f(rows_arr[4], np.float64),
            z0=f(rows_arr[5], np.float64),
            z1=f(rows_arr[6], np.float64),
            color=f(rows_arr[7], np.float32).reshape(-1, 3),
            top=f(rows_arr[8], np.float32).reshape(-1, 3),
            emissive=f(rows_arr[9], bool),
            building=f(rows_arr[10], np.int64),
            lead=np.full(len(rows), lead, np.float64),
        )

    @staticmethod
    def concat(parts: list[Boxes]) -> Boxes:
        return Boxes(
            *(np.concatenate([getattr(p, k) for p in parts]) for k in Boxes.__dataclass_fields__)
        )


@dataclass
class Spheres:
    centres: np.ndarray  # (S, 3)
    radii: np.ndarray
    colors: np.ndarray  # (S, 3) float32


def static_props(town: Town) -> tuple[Boxes, Spheres]:
    """Buildings, tree trunks, signal poles, mast arms and signal housings."""
    rows = [
        (
            b.cx,
            b.cy,
            b.hx,
            b.hy,
            0.0,
            0.0,
            b.height,
            b.color,
            tuple(0.8 * c for c in b.color),
            False,
            i,
        )
        for i, b in enumerate(town.buildings)
    ]
    trunk = (92, 70, 52)
    rows += [(x, y, 0.15, 0.15, 0.0, 0.0, 2.6, trunk, trunk, False, -1) for x, y, _ in town.trees]
    dark, grey = (34, 36, 38), (96, 98, 100)
    for _, k, head in town.light_heads():
        d, r = DIRECTIONS[k], right_of(DIRECTIONS[k])
        pole = head + r * (6.0 - 1.75)
        yaw = float(np.arctan2(d[1], d[0]))
        mid = (head + pole) / 2
        rows.append((pole[0], pole[1], 0.12, 0.12, 0.0, 0.0, 6.2, grey, grey, False, -1))
        rows.append((mid[0], mid[1], 0.08, 2.15, yaw, 5.95, 6.12, grey, grey, False, -1))
        rows.append((head[0], head[1], 0.3, 0.42, yaw, 4.2, 6.0, dark, dark, False, -1))
    trees = Spheres(
        centres=np.stack(
            [town.trees[:, 0], town.trees[:, 1], 2.6 + town.trees[:, 2] * 0.8], axis=1
        ),
        radii=town.trees[:, 2].copy(),
        colors=np.tile(np.array([[60, 104, 44]], np.float32), (len(town.trees), 1)),
    )
    return Boxes.of(rows), trees


def lamps(town: Town, states: list[str]) -> Boxes:
    """The three lamps of every signal head, facing the traffic they govern (their front), drawn
    after the housing they sit on (:data:`LAMP_LEAD`)."""
    rows = []
    for (_, k, head), state in zip(town.light_heads(), states, strict=True):
        d = DIRECTIONS[k]
        face = head - d * 0.32  # the housing's side facing the approaching vehicles
        yaw = float(np.arctan2(d[1], d[0]))
        for i, name in enumerate(LAMP_ORDER):
            on = name == state
            color = LAMP_COLORS[name] if on else LAMP_OFF
            z, half = 5.65 - i * 0.55, 0.3 if on else 0.22
            rows.append(
                (face[0], face[1], 0.03, half, yaw, z - half, z + half, color, color, on, -1)
            )
    return Boxes.of(rows, LAMP_LEAD)


def vehicles(state: np.ndarray, colors: list, night: bool) -> Boxes:
    """Body, cabin, shadow and lights of every vehicle; ``state`` rows are x, y, yaw, vx, vy."""
    length, width, height = VEHICLE_SIZE
    rows = []
    glass = (40, 46, 54)
    for (x, y, yaw, _, _), color in zip(state, colors, strict=True):
        c, s = np.cos(yaw), np.sin(yaw)

        def at(fwd: float, left: float) -> tuple[float, float]:
            return x + c * fwd - s * left, y + s * fwd + c * left  # noqa: B023

        roof = tuple(float(v) for v in color)
        rows.append(
            (
                x,
                y,
                length / 2 + 0.15,
                width / 2 + 0.15,
                yaw,
                0.0,
                0.02,
                (22, 22, 24),
                (22, 22, 24),
                False,
                -1,
            )
        )
        rows.append((x, y, length / 2, width / 2, yaw, 0.3, 1.05, roof, roof, False, -1))
        cx, cy = at(-0.3, 0.0)
        rows.append((cx, cy, 1.15, width / 2 - 0.12, yaw, 1.05, height, glass, roof, False, -1))
        head = (255, 246, 214) if night else (205, 205, 196)
        tail = (230, 30, 24) if night else (150, 24, 22)
        for side in (-0.62, 0.62):
            hx_, hy_ = at(length / 2 + 0.02, side)
            rows.append((hx_, hy_, 0.03, 0.22, yaw, 0.68, 0.86, head, head, night, -1))
            tx_, ty_ = at(-length / 2 - 0.02, side)
            rows.append((tx_, ty_, 0.03, 0.2, yaw, 0.72, 0.9, tail, tail, night, -1))
    return Boxes.of(rows)


def pedestrians(state: np.ndarray, colors: list) -> Boxes:
    """Legs, torso and head of every pedestrian; ``state`` rows are x, y, yaw, vx, vy."""
    rows = []
    for (x, y, yaw, _, _), color in zip(state, colors, strict=True):
        shirt = tuple(float(v) for v in color)
        rows.append((x, y, 0.14, 0.2, yaw, 0.0, 0.88, (44, 46, 60), (44, 46, 60), False, -1))
        rows.append((x, y, 0.15, 0.24, yaw, 0.88, 1.5, shirt, shirt, False, -1))
        rows.append((x, y, 0.11, 0.11, yaw, 1.5, 1.76, SKIN, (60, 40, 30), False, -1))
    return Boxes.of(rows)
