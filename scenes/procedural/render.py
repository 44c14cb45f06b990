"""Rendering the three cameras of the ego vehicle.

No library renders this kind of scene on a CPU at tens of frames per second without OpenGL, so
the renderer is written here, on numpy and OpenCV:

* the ground is a per-pixel lookup into the town's top-down texture (each camera's ground rays are
  fixed in the ego frame, so only a rotation and a gather are done per frame);
* everything standing on the ground is a box (or a sphere for tree crowns) drawn far-to-near with
  OpenCV's polygon fill, faces clipped at the near plane;
* weather changes sky, light, fog, rain streaks and, at night, headlights and lit windows;
* frames are drawn at twice the resolution and area-averaged down (anti-aliasing).
"""

from __future__ import annotations

import cv2
import numpy as np

from scenes.procedural import props
from scenes.procedural.ground import MIP_LEVELS, RES, GroundTexture
from scenes.procedural.town import Town
from scenes.procedural.weather import Weather
from scenes.procedural.windows import NEAR, Windows
from scenes.procedural.world import FrameState
from schemas.scene import (
    CAMERA_FOV_DEG,
    CAMERA_POSITION,
    CENTER_FOV_DEG,
    CENTER_VIEW,
    VIEW_YAW_DEG,
    VIEWS,
)

DRAW_DISTANCE = 160.0
DETAIL_DISTANCE = 60.0  # windows, vehicle lights and lamps are drawn within this range
SHIFT = 4
_FACES = [(0, 1, 5, 4), (1, 2, 6, 5), (2, 3, 7, 6), (3, 0, 4, 7), (4, 5, 6, 7)]
_CORNERS = np.array([[1, -1], [1, 1], [-1, 1], [-1, -1]], np.float64)  # CCW footprint


class Renderer:
    """Draws the camera images of one town under one weather at one resolution."""

    def __init__(
        self,
        town: Town,
        ground: GroundTexture,
        weather: Weather,
        size: tuple[int, int] = (128, 128),
        supersample: int = 2,
        views=VIEWS,
        center: bool = False,
        fov_deg: float = CAMERA_FOV_DEG,
    ):
        """``center``: also draw :data:`~schemas.scene.CENTER_VIEW`, the front camera's centre
        quarter at full size; ``fov_deg``: the horizontal field of view of every view."""
        self.town, self.ground, self.weather, self.views = town, ground, weather, tuple(views)
        self.size = size
        self.hs, self.ws = size[0] * supersample, size[1] * supersample
        self.f = (self.ws / 2) / np.tan(np.radians(fov_deg / 2))
        self.cx, self.cy = self.ws / 2, self.hs / 2
        self.static_boxes, self.trees = props.static_props(town)
        self.windows = Windows(town, weather)
        self._lamps: dict[tuple[str, ...], props.Boxes] = {}  # signal states -> lamp boxes
        self._prepare_ground()
        self.sky = np.stack([self._sky() for _ in self.views])
        self.center = (
            Renderer(town, ground, weather, size, supersample, ("front",), fov_deg=CENTER_FOV_DEG)
            if center
            else None
        )

    # ----------------------------------------------------------------------------- set-up
    def _prepare_ground(self) -> None:
        w = self.weather
        flat, gx, gy, dist, level = [], [], [], [], []
        u, v = np.meshgrid(np.arange(self.ws) + 0.5, np.arange(self.hs) + 0.5)
        xc, yc = (u - self.cx) / self.f, (v - self.cy) / self.f
        below = yc > 1e-3
        cam_h = CAMERA_POSITION[2]
        for i, view in enumerate(self.views):
            t = cam_h / yc[below]
            right = xc[below] * t
            a = -np.radians(VIEW_YAW_DEG[view])  # CARLA yaw (+ right) -> CCW angle
            gx.append(CAMERA_POSITION[0] + np.cos(a) * t + np.sin(a) * right)
            gy.append(CAMERA_POSITION[1] + np.sin(a) * t - np.cos(a) * right)
            d = np.sqrt(t * t + right * right + cam_h * cam_h)
            dist.append(d)
            footprint = np.sqrt((t * t / (self.f * cam_h)) * (d / self.f))
            level.append(
                np.clip(
                    np.floor(np.log2(np.maximum(footprint / RES, 1e-6)) + 0.3), 0, MIP_LEVELS - 1
                )
            )
            flat.append(i * self.hs * self.ws + np.flatnonzero(below.ravel()))
        # ground pixels ordered by mip level, each level's a slice of these arrays
        level = np.concatenate(level)
        order = np.argsort(level, kind="stable")
        self.g_flat = np.concatenate(flat)[order]
        self.g_x, self.g_y = np.concatenate(gx)[order], np.concatenate(gy)[order]
        bounds = np.searchsorted(level[order], np.arange(MIP_LEVELS + 1))
        self.g_level = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        dist = np.concatenate(dist)[order]
        light = np.full(len(dist), w.ambient + w.sun * max(0.0, w.sun_dir[2]), np.float32)
        if w.night:
            light += 0.9 * _headlight(self.g_x, self.g_y)
        if w.wet:
            light *= 0.8
        self.g_gain = (light[:, None] * np.asarray(w.tint, np.float32)[None]).astype(np.float32)
        self.g_fog = (1.0 - np.exp(-w.fog_density * dist)).astype(np.float32)[:, None]
        self.g_clear = 1 - self.g_fog
        self.g_fog_rgb = (self.g_fog * np.asarray(w.fog_color, np.float32)[None]).astype(np.float32)
        if w.wet:  # a faint sheen of the sky on wet asphalt
            self.g_fog_rgb += 0.12 * (1 - self.g_fog) * np.asarray(w.sky_horizon, np.float32)[None]

    def _sky(self) -> np.ndarray:
        w = self.weather
        elev = np.arctan((self.cy - (np.arange(self.hs) + 0.5)) / self.f)
        t = np.clip(elev / np.radians(45.0), 0.0, 1.0)[:, None] ** 0.6
        rows = (1 - t) * np.asarray(w.sky_horizon, np.float64) + t * np.asarray(
            w.sky_top, np.float64
        )
        return np.repeat(rows[:, None, :], self.ws, axis=1).clip(0, 255).astype(np.uint8)

    # ----------------------------------------------------------------------------- per frame
    def render(
        self, frame: FrameState, vehicle_colors, pedestrian_colors, frame_index: int = 0
    ) -> dict[str, np.ndarray]:
        """The images of every view (and the centre view if drawn) for one frame: view -> (H, W, 3)
        uint8 RGB."""
        boxes = self._boxes(frame, vehicle_colors, pedestrian_colors)
        out = self._render_views(frame, boxes, frame_index)
        if self.center is not None:  # same town and weather: the same boxes
            out[CENTER_VIEW] = self.center._render_views(frame, boxes, frame_index)["front"]
        return out

    def _boxes(self, frame: FrameState, vehicle_colors, pedestrian_colors) -> props.Boxes:
        """Static and moving boxes of one frame (the lamps built once per set of signal states)."""
        states = tuple(frame.lights)
        if states not in self._lamps:
            self._lamps[states] = props.lamps(self.town, frame.lights)
        return props.Boxes.concat(
            [
                self.static_boxes,
                self._lamps[states],
                props.vehicles(frame.vehicles, vehicle_colors, self.weather.night),
                props.pedestrians(frame.pedestrians, pedestrian_colors),
            ]
        )

    def _render_views(
        self, frame: FrameState, boxes: props.Boxes, frame_index: int
    ) -> dict[str, np.ndarray]:
        ex, ey, eth = (float(v) for v in frame.ego[:3])
        imgs = self.sky.copy()
        self._draw_ground(imgs, ex, ey, eth)
        out = {}
        for i, view in enumerate(self.views):
            self._draw_props(imgs[i], boxes, ex, ey, eth, view)
            if self.weather.rain:
                _rain(imgs[i], np.random.default_rng([frame_index, i, 77]))
            out[view] = cv2.resize(
                imgs[i], (self.size[1], self.size[0]), interpolation=cv2.INTER_AREA
            )
        return out

    def _draw_ground(self, imgs: np.ndarray, ex: float, ey: float, eth: float) -> None:
        c, s = np.cos(eth), np.sin(eth)
        wx = ex + c * self.g_x - s * self.g_y
        wy = ey + s * self.g_x + c * self.g_y
        col = np.empty((len(wx), 3), np.uint8)
        for k, sel in enumerate(self.g_level):
            r, q = self.ground.texel(wx[sel], wy[sel], k)
            texels = self.ground.levels[k]  # gathered flat: np.take is far faster than [r, q]
            flat = r.astype(np.intp) * texels.shape[1] + q
            col[sel] = np.take(texels.reshape(-1, 3), flat, axis=0)
        lit = col.astype(np.float32) * self.g_gain * self.g_clear + self.g_fog_rgb
        imgs.reshape(-1, 3)[self.g_flat] = np.clip(lit, 0, 255).astype(np.uint8)

    def _camera(self, ex: float, ey: float, eth: float, view: str):
        phi = eth - np.radians(VIEW_YAW_DEG[view])
        pos = np.array(
            [
                ex + np.cos(eth) * CAMERA_POSITION[0],
                ey + np.sin(eth) * CAMERA_POSITION[0],
                CAMERA_POSITION[2],
            ]
        )
        fwd = np.array([np.cos(phi), np.sin(phi), 0.0])
        right = np.array([np.sin(phi), -np.cos(phi), 0.0])
        down = np.array([0.0, 0.0, -1.0])
        return pos, np.stack([right, down, fwd])

    def _draw_props(self, img: np.ndarray, boxes: props.Boxes, ex, ey, eth, view: str) -> None:
        w = self.weather
        pos, rot = self._camera(ex, ey, eth, view)
        # coarse culling on footprint centres: range and in front of the camera
        rel = np.stack([boxes.cx - pos[0], boxes.cy - pos[1]], axis=1)
        radius = np.hypot(boxes.hx, boxes.hy)
        ahead = rel @ rot[2, :2]
        lateral = np.abs(rel @ rot[0, :2])
        dist_c = np.hypot(rel[:, 0], rel[:, 1])
        fov_tan = self.cx / self.f
        keep = (
            (dist_c - radius < DRAW_DISTANCE)
            & (ahead + radius > NEAR)
            & (lateral - radius < (ahead + radius) * fov_tan + 1.0)
        )
        idx = np.flatnonzero(keep)
        corners = _box_corners(boxes, idx)  # (n, 8, 3)
        cam = (corners - pos) @ rot.T
        nearest = _nearest_distance(boxes, idx, pos)
        normals = _face_normals(boxes, idx)  # (n, 5, 3)
        face_pts = corners[:, [0, 1, 2, 3, 4]]  # one point on each face (see _FACES)
        visible = np.einsum("nfk,nfk->nf", pos[None, None] - face_pts, normals) > 0
        shade = w.ambient + w.sun * np.clip(normals @ w.sun_dir, 0, None)
        if w.night:
            ego_rel = np.stack([boxes.cx[idx] - ex, boxes.cy[idx] - ey], axis=1)
            c, s = np.cos(eth), np.sin(eth)
            bx, by = ego_rel @ np.array([c, s]), ego_rel @ np.array([-s, c])
            shade = shade + 0.8 * _headlight(bx, by)[:, None]
        tint = np.asarray(w.tint, np.float32)
        base = np.where(
            np.arange(5)[None, :, None] == 4, boxes.top[idx][:, None], boxes.color[idx][:, None]
        )
        emissive = boxes.emissive[idx]
        color = np.where(emissive[:, None, None], base, base * shade[..., None] * tint)
        fog = (1 - np.exp(-w.fog_density * nearest))[:, None, None]
        color = (color * (1 - fog) + fog * np.asarray(w.fog_color, np.float32)).clip(0, 255)

        # Python-side tables for the painter's loop below, for the boxes drawn only
        building = boxes.building[idx]
        small = (building < 0) & (boxes.z1[idx] - boxes.z0[idx] < 0.5)
        drawn = np.flatnonzero(~(small & (nearest > DETAIL_DISTANCE)))
        near_dist = (nearest - boxes.lead[idx] * visible[:, 2])[drawn].tolist()  # face 2: front
        with np.errstate(divide="ignore", invalid="ignore"):  # corners behind the camera
            polys = np.ascontiguousarray(self._pixels(cam[drawn])[:, _FACES])  # (n, 5, 4, 2)
        crossing = (cam[drawn, :, 2] < NEAR)[:, _FACES].any(axis=2).tolist()  # needs clipping
        fills, faces_seen = color[drawn].tolist(), visible[drawn].tolist()
        windows = self.windows.calls(
            drawn, building, nearest, visible, pos, rot, self._pixels, DETAIL_DISTANCE
        )
        tree_keys, discs = self._trees(pos, rot)

        order = sorted(
            [(d, 0, p) for p, d in enumerate(near_dist)]
            + [(d, 1, k) for k, d in enumerate(tree_keys)],
            reverse=True,
        )
        for _, kind, p in order:
            if kind == 1:
                for centre, radius, col in discs[p]:
                    cv2.circle(img, centre, radius, col, -1, lineType=cv2.LINE_8, shift=SHIFT)
                continue
            seen = faces_seen[p]
            for fi in range(5):
                if not seen[fi]:
                    continue
                if crossing[p][fi]:
                    self._fill_clipped(img, cam[drawn[p], _FACES[fi]], fills[p][fi])
                else:
                    cv2.fillConvexPoly(
                        img, polys[p, fi], fills[p][fi], lineType=cv2.LINE_8, shift=SHIFT
                    )
                for quads, col in windows.get((p, fi), ()):
                    cv2.fillPoly(img, quads, col, lineType=cv2.LINE_8, shift=SHIFT)

    def _pixels(self, cam: np.ndarray) -> np.ndarray:
        """Fixed-point (``SHIFT``) int32 pixel coordinates of camera-space points (..., 3)."""
        uv = np.stack(
            [
                self.cx + self.f * cam[..., 0] / cam[..., 2],
                self.cy + self.f * cam[..., 1] / cam[..., 2],
            ],
            -1,
        )
        return np.round(np.clip(uv, -4 * self.ws, 5 * self.ws) * (1 << SHIFT)).astype(np.int32)

    def _fill_clipped(self, img: np.ndarray, pts: np.ndarray, color) -> None:
        """Fills the part of a camera-space face (k, 3) that lies beyond the near plane."""
        pts = _clip_near(pts)
        if len(pts) >= 3:
            cv2.fillConvexPoly(img, self._pixels(pts), color, lineType=cv2.LINE_8, shift=SHIFT)

    def _trees(self, pos, rot) -> tuple[list[float], list[tuple]]:
        """Sort distances of the trees in view and, for each, the ``cv2.circle`` arguments
        (centre, radius, colour) of its two crown discs, outer first."""
        w, t = self.weather, self.trees
        rel = t.centres - pos
        cam = rel @ rot.T
        d = np.linalg.norm(rel[:, :2], axis=1)
        ok = (
            (cam[:, 2] > t.radii + NEAR)
            & (d < DRAW_DISTANCE)
            & (np.abs(cam[:, 0]) - t.radii < cam[:, 2] * self.cx / self.f)
        )
        js = np.flatnonzero(ok)
        keys = (d[js] - t.radii[js] * 0.5).tolist()
        # one tree at a time, as single-vector products and scalar exp (batched BLAS products
        # and array exp may round differently): camera-space centre, ground distance, fog
        c = np.array([rel[j] @ rot.T for j in js]).reshape(-1, 3)
        dist = np.sqrt([rel[j, :2].dot(rel[j, :2]) for j in js])
        fog = np.array([1 - np.exp(-w.fog_density * float(x)) for x in dist])[:, None]
        u = self.cx + self.f * c[:, 0] / c[:, 2]
        v = self.cy + self.f * c[:, 1] / c[:, 2]
        rad = self.f * t.radii[js] / c[:, 2]
        light = w.ambient + w.sun * 0.6
        layers = []
        for scale, offset, boost in ((1.0, 0.0, 0.8), (0.62, -0.25, 1.1)):
            col = t.colors[js] * light * boost * np.asarray(w.tint, np.float32)
            col = col * (1 - fog) + fog * np.asarray(w.fog_color, np.float32)
            p = np.round(np.stack([u, v + offset * rad], 1) * (1 << SHIFT)).astype(np.int32)
            radius = [max(1, int(r)) for r in (rad * scale * (1 << SHIFT)).tolist()]
            layers.append(zip(p.tolist(), radius, col.clip(0, 255).tolist(), strict=True))
        return keys, list(zip(*layers, strict=True))


def _headlight(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Brightness the ego's headlights add at ego-frame ground points."""
    half = 1.0 + 0.42 * np.maximum(x - 1.0, 0.0)
    edge = np.clip((half - np.abs(y)) / (0.3 * half), 0.0, 1.0)
    return np.where(x > 1.0, edge / (1.0 + (x / 14.0) ** 2), 0.0).astype(np.float32)


def _box_corners(b: props.Boxes, idx: np.ndarray) -> np.ndarray:
    c, s = np.cos(b.yaw[idx]), np.sin(b.yaw[idx])
    lx = _CORNERS[None, :, 0] * b.hx[idx, None]
    ly = _CORNERS[None, :, 1] * b.hy[idx, None]
    x = b.cx[idx, None] + c[:, None] * lx - s[:, None] * ly
    y = b.cy[idx, None] + s[:, None] * lx + c[:, None] * ly
    z0 = np.repeat(b.z0[idx, None], 4, 1)
    z1 = np.repeat(b.z1[idx, None], 4, 1)
    return np.stack(
        [np.concatenate([x, x], 1), np.concatenate([y, y], 1), np.concatenate([z0, z1], 1)], -1
    )


def _face_normals(b: props.Boxes, idx: np.ndarray) -> np.ndarray:
    yaw = b.yaw[idx, None] + np.array([0.0, 0.5, 1.0, 1.5])[None] * np.pi  # faces +x, +y, -x, -y
    sides = np.stack([np.cos(yaw), np.sin(yaw), np.zeros_like(yaw)], -1)
    up = np.tile(np.array([[[0.0, 0.0, 1.0]]]), (len(idx), 1, 1))
    return np.concatenate([sides, up], 1)


def _nearest_distance(b: props.Boxes, idx: np.ndarray, pos: np.ndarray) -> np.ndarray:
    c, s = np.cos(b.yaw[idx]), np.sin(b.yaw[idx])
    dx, dy = pos[0] - b.cx[idx], pos[1] - b.cy[idx]
    lx, ly = c * dx + s * dy, -s * dx + c * dy
    qx = np.clip(lx, -b.hx[idx], b.hx[idx]) - lx
    qy = np.clip(ly, -b.hy[idx], b.hy[idx]) - ly
    qz = np.clip(pos[2], b.z0[idx], b.z1[idx]) - pos[2]
    return np.sqrt(qx * qx + qy * qy + qz * qz)


def _clip_near(pts: np.ndarray) -> np.ndarray:
    """Sutherland–Hodgman clip of a camera-space polygon against ``z >= NEAR``."""
    out = []
    n = len(pts)
    for i in range(n):
        a, b = pts[i], pts[(i + 1) % n]
        ina, inb = a[2] >= NEAR, b[2] >= NEAR
        if ina:
            out.append(a)
        if ina != inb:
            t = (NEAR - a[2]) / (b[2] - a[2])
            out.append(a + (b - a) * t)
    return np.array(out).reshape(-1, 3)


def _rain(img: np.ndarray, rng: np.random.Generator) -> None:
    h, w = img.shape[:2]
    overlay = img.copy()
    n = 90
    x = rng.uniform(0, w, n)
    y = rng.uniform(0, h, n)
    length = rng.uniform(0.04, 0.12, n) * h
    for xi, yi, li in zip(x, y, length, strict=True):
        cv2.line(
            overlay, (int(xi), int(yi)), (int(xi - 0.18 * li), int(yi + li)), (205, 208, 215), 1
        )
    cv2.addWeighted(overlay, 0.35, img, 0.65, 0.0, dst=img)
