"""The town's ground as a top-down texture: asphalt, markings, sidewalks, crossings, lots.

The renderer looks up every ground pixel of every camera in this texture (with a mip level
chosen by distance), which is what makes the three views cheap to draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from scenes.procedural.geometry import DIRECTIONS, right_of
from scenes.procedural.town import BOX, CROSSWALK, ROAD_HALF, SIDEWALK_OUTER, STOP_LINE, Town

RES = 0.1  # metres per texel at mip level 0
MIP_LEVELS = 4
SHIFT = 4  # cv2 sub-pixel bits

ASPHALT = (64, 65, 68)
SIDEWALK = (156, 153, 146)
PLAZA = (120, 117, 108)
GRASS = (72, 108, 52)
FOOTPRINT = (92, 90, 86)
WHITE = (228, 228, 222)
YELLOW = (214, 170, 40)


@dataclass
class GroundTexture:
    levels: list[np.ndarray]  # RGB uint8, row 0 = north edge
    x0: float
    y1: float

    def texel(self, x: np.ndarray, y: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
        """Row and column indices of world points in mip ``level`` (clamped to the texture)."""
        tex = self.levels[level]
        scale = RES * (1 << level)
        col = np.clip(((x - self.x0) / scale).astype(np.int32), 0, tex.shape[1] - 1)
        row = np.clip(((self.y1 - y) / scale).astype(np.int32), 0, tex.shape[0] - 1)
        return row, col


def build_ground(town: Town) -> GroundTexture:
    """Draw the town's ground texture and its mip levels."""
    x0, y0, x1, y1 = town.bounds
    w, h = int(np.ceil((x1 - x0) / RES)), int(np.ceil((y1 - y0) / RES))
    img = np.empty((h, w, 3), np.uint8)
    img[:] = PLAZA

    def px(p) -> tuple[int, int]:
        return (
            int(round((p[0] - x0) / RES * (1 << SHIFT))),
            int(round((y1 - p[1]) / RES * (1 << SHIFT))),
        )

    def quad(a, b, half_width, color, offset=0.0) -> None:
        """Filled band from ``a`` to ``b`` with lateral extent ``offset ± half_width``."""
        d = (b - a) / np.linalg.norm(b - a)
        r = right_of(d)
        c0, c1 = offset - half_width, offset + half_width
        pts = np.array([px(a + r * c0), px(b + r * c0), px(b + r * c1), px(a + r * c1)], np.int32)
        cv2.fillConvexPoly(img, pts, color, lineType=cv2.LINE_AA, shift=SHIFT)

    for lot in town.lots_park:
        quad(
            np.array([lot[0], (lot[1] + lot[3]) / 2]),
            np.array([lot[2], (lot[1] + lot[3]) / 2]),
            (lot[3] - lot[1]) / 2,
            GRASS,
        )
    for b in town.buildings:
        quad(
            np.array([b.cx - b.hx - 0.6, b.cy]),
            np.array([b.cx + b.hx + 0.6, b.cy]),
            b.hy + 0.6,
            FOOTPRINT,
        )

    roads = [
        (n, town.neighbour(n, k), k) for n in town.nodes for k in (0, 1) if town.neighbour(n, k)
    ]
    for n, m, k in roads:
        d = DIRECTIONS[k]
        quad(
            town.node_xy(n) - d * SIDEWALK_OUTER,
            town.node_xy(m) + d * SIDEWALK_OUTER,
            SIDEWALK_OUTER,
            SIDEWALK,
        )
    for n, m, _ in roads:
        quad(town.node_xy(n), town.node_xy(m), ROAD_HALF, ASPHALT)
    for n in town.nodes:
        _junction_corners(town, n, img, px)

    noise = np.random.default_rng([town.seed, 31]).integers(-7, 8, (h, w, 1), dtype=np.int16)
    img[:] = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)

    for n, m, k in roads:
        d = DIRECTIONS[k]
        a, b = town.node_xy(n) + d * BOX, town.node_xy(m) - d * BOX
        quad(a, b, 0.07, YELLOW, offset=-0.16)
        quad(a, b, 0.07, YELLOW, offset=0.16)
        quad(a, b, 0.07, WHITE, offset=-(ROAD_HALF - 0.3))
        quad(a, b, 0.07, WHITE, offset=ROAD_HALF - 0.3)
    for n in town.nodes:
        if town.has_light(n):
            _crossings(town, n, quad)
    levels = [img]
    for _ in range(MIP_LEVELS - 1):
        levels.append(
            cv2.resize(
                levels[-1],
                (levels[-1].shape[1] // 2, levels[-1].shape[0] // 2),
                interpolation=cv2.INTER_AREA,
            )
        )
    return GroundTexture(levels=levels, x0=x0, y1=y1)


def _junction_corners(town: Town, node, img: np.ndarray, px) -> None:
    """Asphalt between two neighbouring arms, bounded by a rounded kerb."""
    arms = set(town.arms(node))
    c = town.node_xy(node)
    for k in range(4):
        if k in arms and (k + 1) % 4 in arms:
            u, v = DIRECTIONS[k], DIRECTIONS[(k + 1) % 4]
            centre = c + (u + v) * BOX
            radius = BOX - ROAD_HALF
            angles = np.linspace(np.pi, 1.5 * np.pi, 12)
            kerb = [centre + u * radius * np.cos(a) + v * radius * np.sin(a) for a in angles]
            corner = [c + u * ROAD_HALF + v * ROAD_HALF, c + u * BOX + v * ROAD_HALF] + kerb[::-1]
            corner.append(c + u * ROAD_HALF + v * BOX)
            cv2.fillPoly(
                img,
                [np.array([px(p) for p in corner], np.int32)],
                ASPHALT,
                lineType=cv2.LINE_AA,
                shift=SHIFT,
            )


def _crossings(town: Town, node, quad) -> None:
    """Zebra crossings on every arm and the stop line of every approach."""
    c = town.node_xy(node)
    for k in town.arms(node):
        d = DIRECTIONS[k]
        r = right_of(d)
        for lat in np.arange(-ROAD_HALF + 0.55, ROAD_HALF - 0.3, 1.0):
            quad(c + d * CROSSWALK[0], c + d * CROSSWALK[1], 0.25, WHITE, offset=lat)
        # vehicles arriving on this arm travel along -d; their lane lies to the right of -d, i.e. -r
        quad(
            c + d * (STOP_LINE - 0.2) - r * 0.2,
            c + d * (STOP_LINE - 0.2) - r * (ROAD_HALF - 0.2),
            0.2,
            WHITE,
        )
