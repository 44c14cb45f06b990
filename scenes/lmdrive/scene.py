"""An LMDrive-format route folder as a contract :class:`~schemas.scene.Scene`, read lazily:
:func:`open_route` (one folder) and :func:`open_root` (every route of a dataset root)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from scenes.lmdrive.conventions import to_ego
from scenes.lmdrive.files import (
    PathLike,
    check_size,
    count_frames,
    decode_image,
    image_size,
    read_json_object,
)
from scenes.lmdrive.folders import probe_size, read_index, read_meta, scan_images, tags_from_name
from scenes.lmdrive.instructions import NO_INSTRUCTION, load_templates, record_span, span_key
from scenes.lmdrive.layout import ACTORS_DIR, FULL_ORDER, INDEX_FILE, LMGD_KEY, MEASUREMENTS_DIR
from scenes.lmdrive.records import Records, root_records, route_records
from scenes.lmdrive.to_contract import (
    ego_pose,
    light_distance,
    light_state,
    measurements_from_dict,
    num,
    objects,
    route_waypoints,
    weather_name,
)
from schemas.errors import SceneFormatError
from schemas.scene import FPS, VIEWS, WAYPOINT_TIMES, Instruction, InstructionSpan, Measurements

log = logging.getLogger(__name__)


class LMDriveScene:
    """One LMDrive-format route folder as a contract :class:`Scene`; frames are read on demand.

    Made by :func:`open_route` and :func:`open_root`. Opening checks the folders, frame counts and
    instruction files; images and measurements are read (and checked) only when a frame is asked
    for.
    """

    def __init__(
        self,
        route_dir: PathLike,
        *,
        records: Records,
        templates: Mapping[int, list[str]] | None = None,
        expected: tuple[int, str] | None = None,
    ):
        self.root = Path(route_dir)
        meta = read_meta(self.root)
        self.name: str = meta.get("name", self.root.name)
        self.fps: float = meta.get("fps", FPS)
        self.views: tuple[str, ...] = meta.get("views", VIEWS)
        self._tags: dict = meta["tags"] if meta else tags_from_name(self.root.name)
        self._images = scan_images(self.root, self.views)
        self._n = self._images.count
        self._check_count(self.root / MEASUREMENTS_DIR, required=True)
        self._has_actors = self._check_count(self.root / ACTORS_DIR, required=False)
        if expected is not None and expected[0] != self._n:
            raise SceneFormatError(
                f"{expected[1]}: says {expected[0]} frames, {self.root} holds {self._n}"
            )
        self.size: tuple[int, int] = meta.get("size") or probe_size(self._images, self.views)
        self._nav = sorted(
            (record_span(w, r, templates, self._n, False) for w, r in records.nav), key=span_key
        )
        notices = [record_span(w, r, templates, self._n, True) for w, r in records.notices]
        self._spans = sorted(self._nav + notices, key=span_key)
        if templates is None and any("text" not in r for _, r in records.nav + records.notices):
            log.warning(
                "%s: no instruction_dict given; instruction texts are rule names", self.root
            )
        log.debug("opened %s: %d frames, views %s", self.root, self._n, self.views)

    def _check_count(self, folder: Path, required: bool) -> bool:
        """Whether ``folder`` exists; if it does, it must hold as many frames as the images."""
        if not required and not folder.is_dir():
            return False
        n, _ = count_frames(folder, ("json",))
        if n != self._n:
            raise SceneFormatError(f"{folder}: holds {n} frames, the image folders hold {self._n}")
        return True

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"LMDriveScene({str(self.root)!r}, frames={self._n})"

    @property
    def tags(self) -> dict:
        return dict(self._tags)

    def instructions(self) -> list[InstructionSpan]:
        """Navigation and notice spans, sorted by (start, end, id, text)."""
        return list(self._spans)

    def _frame(self, i: int) -> int:
        if not 0 <= i < self._n:
            raise IndexError(f"frame {i} outside 0..{self._n - 1} of {self.root}")
        return int(i)

    def images(self, i: int) -> dict[str, np.ndarray]:
        """Images of frame ``i``: view name -> (H, W, 3) uint8 RGB."""
        i = self._frame(i)
        if self._images.stacked:
            return self._stacked_images(i)
        out = {}
        for view in self.views:
            path = self._images.path(view, i)
            out[view] = decode_image(path)
            check_size(path, out[view], self.size)
        return out

    def check_frames(self, frames: Iterable[int]) -> None:
        """Every view of these frames is an image of the route's size (read from the headers, no
        pixels decoded) and their measurements are readable; problems raise
        :class:`SceneFormatError` naming the file."""
        h, w = self.size
        want = (h * len(FULL_ORDER), w) if self._images.stacked else (h, w)
        views = self.views[:1] if self._images.stacked else self.views
        for i in sorted(set(frames)):
            for view in views:
                path = self._images.path(view, self._frame(i))
                got = image_size(path)
                if got != want:
                    raise SceneFormatError(
                        f"{path}: image is {got[1]}x{got[0]} pixels, the route's frames are "
                        f"{want[1]}x{want[0]}"
                    )
            self.measurements(i)

    def _stacked_images(self, i: int) -> dict[str, np.ndarray]:
        """Crop the views out of ``rgb_full`` (front, left, right, rear stacked vertically)."""
        path = self._images.path(self.views[0], i)
        full = decode_image(path)
        h, w = self.size
        check_size(path, full, (h * len(FULL_ORDER), w))
        return {
            v: np.ascontiguousarray(full[FULL_ORDER.index(v) * h : (FULL_ORDER.index(v) + 1) * h])
            for v in self.views
        }

    def _raw(self, i: int) -> tuple[dict, Path]:
        path = self.root / MEASUREMENTS_DIR / f"{i:04d}.json"
        return read_json_object(path), path

    def measurements(self, i: int) -> Measurements:
        i = self._frame(i)
        raw, path = self._raw(i)
        if LMGD_KEY in raw:
            return measurements_from_dict(raw[LMGD_KEY], path)
        return self._convert(i, raw, path)

    def _convert(self, i: int, raw: dict, path: Path) -> Measurements:
        """Contract measurements from LMDrive keys (see :mod:`scenes.lmdrive.conventions`)."""
        pose = ego_pose(raw, path)
        actors_path = self.root / ACTORS_DIR / f"{i:04d}.json"
        actors = read_json_object(actors_path) if self._has_actors else {}
        instruction, completed = self._instruction_at(i)
        return Measurements(
            frame=i,
            x=pose[0],
            y=pose[1],
            theta=pose[2],
            speed=num(raw, "speed", path),
            steer=num(raw, "steer", path),
            throttle=num(raw, "throttle", path),
            brake=num(raw, "brake", path),  # LMDrive stores the expert's bool
            waypoints=self._waypoints(i, raw, pose, path),
            light_state=light_state(raw, actors),
            light_distance=light_distance(raw),
            is_junction=bool(raw.get("is_junction", False)),
            objects=objects(actors, pose, actors_path),
            instruction=instruction,
            instruction_completed=completed,
            weather=weather_name(raw.get("weather_id", self._tags.get("weather_id"))),
        )

    def _waypoints(
        self, i: int, raw: dict, pose: tuple[float, float, float], path: Path
    ) -> np.ndarray:
        """The ego-frame positions at ``WAYPOINT_TIMES`` (t + 0.2 .. 0.8 s).

        * When the route holds frame ``i + t * fps`` for every t: the recorded poses of those
          later frames (what LMDrive's loaders do, at their own 0.5 s spacing).
        * Near the end of the route: ``future_waypoints`` (the expert's planned path) walked at the
          current speed, i.e. assuming constant speed along the route for 0.8 s.
        * Without ``future_waypoints``: later frames clamped to the last one (LMDrive's rule).
        """
        steps = [round(t * self.fps) for t in WAYPOINT_TIMES]
        if i + steps[-1] >= self._n and raw.get("future_waypoints"):
            return route_waypoints(raw, pose[2], num(raw, "speed", path), path).astype(np.float32)
        world = np.array([self._position(min(i + s, self._n - 1)) for s in steps])
        return to_ego(world - pose[:2], pose[2]).astype(np.float32)

    def _position(self, i: int) -> tuple[float, float]:
        raw, path = self._raw(i)
        x, y, _ = ego_pose(raw, path)
        return x, y

    def _instruction_at(self, i: int) -> tuple[Instruction, bool]:
        """The most recently issued navigation span covering ``i``; completed at its last frame."""
        active = [s for s in self._nav if s.start_frame <= i <= s.end_frame]
        if not active:
            return NO_INSTRUCTION, False
        span = max(active, key=lambda s: (s.start_frame, -s.end_frame))
        return span.instruction, i == span.end_frame


def open_route(
    route_dir: PathLike,
    *,
    instruction_dict: PathLike | None = None,
    expected_frames: int | None = None,
) -> LMDriveScene:
    """Open one route folder lazily.

    ``instruction_dict``: LMDrive's ``leaderboard/leaderboard/envs/instruction_dict.json``, used to
    turn instruction ids into text for records that carry none (else the rule name is the text).
    ``expected_frames``: the frame count the caller expects (a mismatch is a
    :class:`SceneFormatError`).
    """
    route = Path(route_dir)
    if not route.is_dir():
        raise SceneFormatError(f"{route}: route folder not found")
    templates = load_templates(instruction_dict) if instruction_dict is not None else None
    expected = None if expected_frames is None else (expected_frames, "expected_frames")
    return LMDriveScene(
        route, records=route_records(route, None), templates=templates, expected=expected
    )


def open_root(root: PathLike, *, instruction_dict: PathLike | None = None) -> list[LMDriveScene]:
    """Open every route listed in ``<root>/dataset_index.txt`` (lazily), checking frame counts."""
    root = Path(root)
    entries = read_index(root / INDEX_FILE)
    templates = load_templates(instruction_dict) if instruction_dict is not None else None
    shared = root_records(root)
    scenes = []
    for where, rel, n in entries:
        route = root / rel
        if not route.is_dir():
            raise SceneFormatError(f"{where}: route folder {route} not found")
        records = route_records(route, shared)
        scenes.append(
            LMDriveScene(route, records=records, templates=templates, expected=(n, where))
        )
    log.info("opened %d routes under %s", len(scenes), root)
    return scenes
