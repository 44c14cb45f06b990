"""Building windows: their quads on every side face of every building, and the fills the
renderer's painter's loop draws right after each face.

The camera-space corners and pixels of all the windows a view draws are computed in one batch
(per face they cost more in numpy calls than in drawing); the fills come out as they did drawn
face by face, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from scenes.procedural.town import Town
from scenes.procedural.weather import Weather

NEAR = 0.2  # metres: the cameras' near plane; a window is drawn with all four corners beyond it
LIT = np.array([255, 214, 140], np.float32)  # a lit window at night


class Windows:
    """The windows of one town under one weather."""

    def __init__(self, town: Town, weather: Weather):
        grid = _window_grid(town)
        self.weather = weather
        self.quads = np.concatenate([q for faces in grid for q, _ in faces]).reshape(-1, 4, 3)
        self.lit = np.concatenate([lit for faces in grid for _, lit in faces]).astype(bool)
        counts = np.array([[len(q) for q, _ in faces] for faces in grid]).reshape(-1, 4)
        stops = np.cumsum(counts.ravel()).reshape(counts.shape)
        self.start, self.stop = (stops - counts).tolist(), stops.tolist()
        w = weather
        self.fog_color = np.asarray(w.fog_color, np.float32)
        self.bases = []  # per building: the fill of its lit and dark windows before fog
        for b in town.buildings:
            glass = np.asarray(b.window_color, np.float32)
            if w.night:
                self.bases.append((LIT, glass * 0.25))
            else:
                sky = np.asarray(w.sky_horizon, np.float32)
                self.bases.append(((0.75 * glass + 0.25 * sky) * (w.ambient + 0.3 * w.sun),))

    def calls(
        self,
        drawn: np.ndarray,
        building: np.ndarray,
        nearest: np.ndarray,
        visible: np.ndarray,
        pos: np.ndarray,
        rot: np.ndarray,
        pixels: Callable[[np.ndarray], np.ndarray],
        detail_distance: float,
    ) -> dict[tuple[int, int], list[tuple[list[np.ndarray], tuple[float, ...]]]]:
        """``cv2.fillPoly`` arguments (quads, colour) for the windows on each visible side face of
        the drawn boxes that are buildings within ``detail_distance``: (position in ``drawn``,
        face) -> calls. ``building``, ``nearest`` and ``visible`` are per culled box, ``drawn``
        indexes them; ``pos`` and ``rot`` are the camera's, ``pixels`` its projection."""
        faces, rows = [], []
        for p, j in enumerate(drawn.tolist()):
            b = int(building[j])
            if b < 0 or not nearest[j] < detail_distance:
                continue
            for fi in range(4):
                if visible[j, fi] and self.stop[b][fi] > self.start[b][fi]:
                    faces.append((p, fi, j, b))
                    rows.append(np.arange(self.start[b][fi], self.stop[b][fi]))
        if not faces:
            return {}
        rows_all = np.concatenate(rows)
        cam = (self.quads[rows_all] - pos) @ rot.T  # (n, 4, 3)
        front = (cam[..., 2] > NEAR).all(axis=1)
        polys = pixels(cam[front])
        lit = self.lit[rows_all][front]
        ends = np.cumsum([front[k : k + len(r)].sum() for k, r in _offsets(rows)]).tolist()
        out: dict[tuple[int, int], list] = {}
        begin = 0
        for (p, fi, j, b), end in zip(faces, ends, strict=True):
            if end == begin:
                continue
            fog = 1 - np.exp(-self.weather.fog_density * nearest[j])
            face_polys, face_lit = polys[begin:end], lit[begin:end]
            groups = (
                [
                    (face_polys[face_lit], self.bases[b][0]),
                    (face_polys[~face_lit], self.bases[b][1]),
                ]
                if self.weather.night
                else [(face_polys, self.bases[b][0])]
            )
            calls = []
            for quads, base in groups:
                if len(quads):
                    col = base * (1 - fog) + fog * self.fog_color
                    calls.append((list(quads), tuple(col.clip(0, 255).tolist())))
            out[(p, fi)] = calls
            begin = end
        return out


def _offsets(rows: list[np.ndarray]):
    """(start, rows) of each block of ``rows`` in their concatenation."""
    k = 0
    for r in rows:
        yield k, r
        k += len(r)


def _window_grid(town: Town) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Window quads (n, 4, 3) and a lit-at-night mask for every side face of every building."""
    out = []
    rng = np.random.default_rng([town.seed, 4242])
    for b in town.buildings:
        faces = []
        floors = np.arange(2.2, b.height - 1.2, 3.2)
        for fi in range(4):
            normal_axis, along_axis = (0, 1) if fi in (0, 2) else (1, 0)
            sign = 1.0 if fi in (0, 1) else -1.0
            half_along = b.hy if along_axis == 1 else b.hx
            half_normal = b.hx if normal_axis == 0 else b.hy
            cols = np.arange(-half_along + 1.8, half_along - 1.2, 3.0)
            if len(cols) == 0 or len(floors) == 0:
                faces.append((np.zeros((0, 4, 3)), np.zeros(0, bool)))
                continue
            a, z = np.meshgrid(cols, floors)
            a, z = a.ravel(), z.ravel()
            quad = []
            for da, dz in ((0.0, 0.0), (1.3, 0.0), (1.3, 1.6), (0.0, 1.6)):
                p = np.zeros((len(a), 3))
                p[:, normal_axis] = sign * (half_normal + 0.05)
                p[:, along_axis] = a + da
                p[:, 2] = z + dz
                quad.append(p)
            q = np.stack(quad, 1) + np.array([b.cx, b.cy, 0.0])
            faces.append((q, rng.random(len(a)) < b.lit_share))
        out.append(faces)
    return out
