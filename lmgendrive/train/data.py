"""Training data: seed scenes -> map-style datasets of (scene, frame) windows -> a DataLoader.

This module imports :mod:`scenes` (the seed-scene sources); that is acceptable for training code,
which is not part of the inference path ``lmgendrive`` otherwise keeps free of project layers.

Scene sources (:func:`open_scenes`):

* ``data.lmdrive_root``: an LMDrive-format root (``dataset_index.txt``), read lazily.
* ``data.cache``: procedural towns rendered once into an LMDrive root there (missing routes only,
  in parallel processes), then read lazily. The demo job uses this: a frame is rendered once
  instead of once per epoch and stage, and PNG decoding in the loader workers costs far less CPU
  than rendering, which matters on two cores.
* neither: procedural towns rendered on the fly in the loader workers, deterministically from seeds.

Every item depends only on its index (no randomness in the datasets); the order comes from
:class:`StreamSampler`, an endless seeded permutation stream that can start at any position, so
the data position of a resumed run is just the number of samples already consumed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from driving.maneuver import path_maneuver
from lmgendrive.config import ModelConfig
from lmgendrive.train.config import DataConfig
from lmgendrive.train.perception import NEAR_LIGHT_M, build_bev_targets, lane_target
from lmgendrive.vision import LIGHT_CLASSES
from scenes.lmdrive import open_root, write_index, write_route
from scenes.procedural.drive import (
    WAYPOINT_FRAMES,
    DriveSpec,
    ProceduralScene,
    drive_version,
    scene_name,
)
from schemas.errors import ConfigError
from schemas.scene import (
    CENTER_VIEW,
    FPS,
    OBJECT_CLASSES,
    TURNS,
    Measurements,
    Scene,
    center_of_front,
)

log = logging.getLogger(__name__)

DETECTED = (OBJECT_CLASSES.index("vehicle"), OBJECT_CLASSES.index("pedestrian"))
# planner windows by what the expert does
GROUPS = (
    *TURNS,
    "departure",
    "approach",
    "recovery",
    "slowing",
    "stopping",
    "onpolicy",
    "other",
)
ONPOLICY_SOURCE = "onpolicy"  # tags["source"] of a model's drives labelled by the expert (DAgger)
RECOVERY_FRAMES = 20  # a recovery drive's windows up to 2 s after a perturbation: it recovers
AT_REST = 1.0  # m/s
SETS_OFF = 0.4  # m the plan gains in its 0.8 s on the current speed, to count as setting off
SLOWS = 0.5  # m the plan loses in its 0.8 s on the current speed, to count as slowing (1.6 m/s^2)
PLAN_SECONDS = max(WAYPOINT_FRAMES) / FPS  # the plan's horizon
STOPPING_SPEED = 2.0  # m/s: moving at least this fast towards a red light, to count as stopping
VERSION_FILE = "drive_version.txt"  # in each cached route: the drive_version that rendered it


def drive_specs(data: DataConfig, center_view: bool = False) -> list[DriveSpec]:
    """The procedural drives: every town x (``routes_per_town`` routes entered at speed, then
    ``rest_start_routes`` starting at rest, on the next route seeds), then every town x
    ``recovery_routes`` recovery drives on the route seeds after those, then every town x
    ``displaced_routes`` displaced-camera drives on the seeds after those, then every town x
    ``relit_routes`` relit drives on the seeds after those; drive k gets weather
    ``weathers[k % len(weathers)]`` (so 6 routes per town over 6 weathers cover each weather, and
    adding recovery drives changes no other drive). ``center_view``: their images also have the
    centre view."""
    per_town = data.routes_per_town + data.rest_start_routes
    groups = [[(r, {"start_at_rest": r >= data.routes_per_town}) for r in range(per_town)]]
    first = per_town
    for flag, count in (
        ("recovery", data.recovery_routes),
        ("displaced", data.displaced_routes),
        ("relit", data.relit_routes),
    ):
        groups.append([(first + r, {flag: True}) for r in range(count)])
        first += count
    specs = []
    for group in groups:
        for town in data.town_seeds():
            for r, kind in group:
                specs.append(
                    DriveSpec(
                        town,
                        data.route_seed + r,
                        data.weathers[len(specs) % len(data.weathers)],
                        data.frames,
                        (data.size, data.size),
                        center_view=center_view,
                        **kind,
                    )
                )
    return specs


def _render(spec: DriveSpec, root: Path) -> Path:
    scene = ProceduralScene(spec)
    route = write_route(scene, root / scene.name, overwrite=True)
    (route / VERSION_FILE).write_text(f"{drive_version(spec)}\n")  # last: the route is complete
    return route


def _is_current(route: Path, spec: DriveSpec) -> bool:
    """Whether ``route`` was rendered completely by this version of ``spec``'s drive
    (:func:`~scenes.procedural.drive.drive_version`)."""
    stamp = route / VERSION_FILE
    return stamp.is_file() and stamp.read_text().strip() == drive_version(spec)


def render_cache(data: DataConfig, root: Path, center_view: bool = False) -> Path:
    """Render the procedural drives (:func:`drive_specs`) missing from the LMDrive root ``root``,
    or rendered there by an older version (:func:`~scenes.procedural.drive.drive_version`);
    returns the root."""
    from storage.progress import progress

    specs = drive_specs(data, center_view)
    names = [scene_name(s) for s in specs]
    missing = [s for s, n in zip(specs, names, strict=True) if not _is_current(root / n, s)]
    root.mkdir(parents=True, exist_ok=True)
    if missing:
        log.info("rendering %d of %d training drives into %s", len(missing), len(specs), root)
        stale = sum((root / scene_name(s)).is_dir() for s in missing)
        if stale:
            log.warning("%s: %d drives from an older version are rendered again", root, stale)
        with (
            ProcessPoolExecutor(max(1, data.workers)) as pool,
            progress(len(missing), "render drives", "drive") as bar,
        ):
            for _ in pool.map(_render, missing, [root] * len(missing)):
                bar.update()
    write_index(root, [root / n for n in names])
    return root


def open_scenes(
    data: DataConfig, center_view: bool = False, onpolicy: Path | None = None
) -> list[Scene]:
    """The training scenes of ``data`` (see the module docstring for the three sources);
    ``center_view``: procedural drives are drawn with the centre view too; ``onpolicy``: then the
    on-policy drives of that LMDrive root (``lmgd drive --record``)."""
    extra = list(open_root(onpolicy)) if onpolicy is not None else []
    if data.lmdrive_root is not None:
        return list(open_root(data.lmdrive_root)) + extra
    if data.cache is not None:
        return list(open_root(render_cache(data, Path(data.cache), center_view))) + extra
    return [ProceduralScene(s) for s in drive_specs(data, center_view)] + extra


def _views(scene: Scene, i: int, views: Sequence[str], size: tuple[int, int]) -> np.ndarray:
    """uint8 (V, H, W, 3) of frame ``i``, resized to ``size`` = (H, W) when needed. Where the scene
    has no centre view it is cut from the scene's front image at the size the scene has it, as
    LMDrive cuts ``rgb_center`` from its front camera."""
    images = scene.images(i)
    out = []
    for v in views:
        img = images[v] if v in images or v != CENTER_VIEW else center_of_front(images["front"])
        if img.shape[:2] != tuple(size):
            img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        out.append(img)
    return np.stack(out)


def object_array(m: Measurements) -> np.ndarray:
    """Vehicles and pedestrians of ``m`` as (M, 7) rows for :func:`build_bev_targets`."""
    rows = [
        (
            OBJECT_CLASSES.index(o.cls),
            o.x,
            o.y,
            o.yaw,
            o.length,
            o.width,
            float(np.hypot(o.vx, o.vy)),
        )
        for o in m.objects
        if o.cls in OBJECT_CLASSES and OBJECT_CLASSES.index(o.cls) in DETECTED
    ]
    return np.asarray(rows, dtype=np.float32).reshape(-1, 7)


class _SceneDataset(Dataset):
    """Shared index over (scene, frame) windows."""

    def __init__(
        self,
        scenes: Sequence[Scene],
        config: ModelConfig,
        before: int,
        after: int,
        views: Sequence[str] | None = None,
    ):
        self.scenes = list(scenes)
        self.config = config
        self.views = tuple(views or config.views)
        self.index = [
            (s, i) for s, scene in enumerate(self.scenes) for i in range(before, len(scene) - after)
        ]
        if not self.index:
            raise ValueError(f"no training windows: scenes need more than {before + after} frames")

    def __len__(self) -> int:
        return len(self.index)

    def frames(self, s: int, i: int, views: Sequence[str] | None = None) -> np.ndarray:
        """uint8 (V, H, W, 3) of frame ``i`` of scene ``s``: ``views``, default the dataset's."""
        return _views(self.scenes[s], i, views or self.views, self.config.image_size)


class FrameDataset(_SceneDataset):
    """Single frames (stages 0 and 1): views, BEV detection target, waypoints, light class, lane
    target (:func:`~lmgendrive.train.perception.lane_target`), the light reader's class (the
    light's within ``near_light_range`` metres of its stop line, default
    :data:`~lmgendrive.train.perception.NEAR_LIGHT_M`).
    ``drop_perturbed``: leave out the frames whose waypoints show a recovery drive's perturbation
    (:func:`perturbed_labels`): they are not the driver's. ``light_range``: the light class is the
    governing light's state only within that many metres of its stop line, "none" farther.
    ``views``: the views of its frames (default the model's camera views; stage 1 takes the vision
    encoder's)."""

    def __init__(
        self,
        scenes: Sequence[Scene],
        config: ModelConfig,
        drop_perturbed: bool = False,
        light_range: float = np.inf,
        views: Sequence[str] | None = None,
        near_light_range: float = NEAR_LIGHT_M,
    ):
        super().__init__(scenes, config, 0, 0, views)
        self.light_range, self.near_light_range = light_range, near_light_range
        if drop_perturbed:
            shown = [perturbed_labels(scene)[0] for scene in self.scenes]
            self.index = [(s, i) for s, i in self.index if not shown[s][i]]

    def __getitem__(self, k: int) -> dict:
        s, i = self.index[k]
        m = self.scenes[s].measurements(i)
        return {
            "frames": self.frames(s, i),
            "detection": build_bev_targets(object_array(m), self.config.vision),
            "waypoints": np.asarray(m.waypoints, dtype=np.float32),
            "light": LIGHT_CLASSES.index(
                m.light_state if m.light_distance <= self.light_range else "none"
            ),
            "lane": lane_target(m.lane_offset, m.lane_heading, m.is_junction),
            "near_light": LIGHT_CLASSES.index(
                m.light_state if m.light_distance <= self.near_light_range else "none"
            ),
        }


class DriveDataset(_SceneDataset):
    """Windows of ``context`` frames followed by ``steps`` generation steps (stages 2-4).

    Step k's current frame is ``t + k F`` (F = frames_per_step): its waypoints and completion flag
    are the targets of step k and frames ``t + kF + 1 .. t + (k+1)F`` its future video. The
    previous action is the waypoints of frame ``t - F`` (zeros at the start of a drive).
    ``pad_start``: windows start at every drive's first frame, the context before it filled with
    that frame (what a closed loop sees when it starts); else at the first full context. Context
    frames have the vision encoder's views, future frames the model's camera views.
    """

    def __init__(
        self,
        scenes: Sequence[Scene],
        config: ModelConfig,
        context: int,
        steps: int,
        pad_start: bool = False,
    ):
        self.context, self.steps, self.step_frames = context, steps, config.frames_per_step
        before = 0 if pad_start else context - 1
        super().__init__(scenes, config, before, steps * self.step_frames, config.vision_views)

    def context_frames(self, t: int) -> list[int]:
        """The frame indices of window ``t``'s context, oldest first (frame 0 repeated before a
        drive's start)."""
        return [max(i, 0) for i in range(t - self.context + 1, t + 1)]

    def __getitem__(self, k: int) -> dict:
        s, t = self.index[k]
        f = self.step_frames
        future = [
            np.stack(
                [self.frames(s, t + j * f + q, self.config.views) for q in range(1, f + 1)], axis=1
            )
            for j in range(self.steps)
        ]
        return {
            "frames": np.stack([self.frames(s, i) for i in self.context_frames(t)], axis=1),
            **self.targets(s, t, self.steps),
            "future_frames": np.stack(future),
        }

    def targets(self, s: int, t: int, steps: int) -> dict:
        """Everything of window (scene ``s``, frame ``t``) but pixels, for its first ``steps``
        steps."""
        scene, f = self.scenes[s], self.step_frames
        now = scene.measurements(t)
        current = [scene.measurements(t + j * f) for j in range(steps)]
        prev = (
            np.asarray(scene.measurements(t - f).waypoints, dtype=np.float32)
            if t >= f
            else np.zeros((self.config.vision.num_waypoints, 2), np.float32)
        )
        return {
            "instruction": now.instruction.text,
            "speed": np.float32(now.speed),
            "prev_waypoints": prev,
            "waypoints": np.stack([np.asarray(m.waypoints, dtype=np.float32) for m in current]),
            "completed": np.asarray([m.instruction_completed for m in current], dtype=np.float32),
        }


def junction_entries(scene: Scene) -> list[int]:
    """The frames at which ``scene`` enters a junction (``is_junction`` turns true)."""
    inside = [scene.measurements(i).is_junction for i in range(len(scene))]
    return [t for t in range(1, len(inside)) if inside[t] and not inside[t - 1]]


def is_departure(m: Measurements) -> bool:
    """The car is at rest or creeping (below :data:`AT_REST` m/s) and its plan sets off: the last
    waypoint (0.8 s ahead) at least :data:`SETS_OFF` m beyond where the current speed takes it."""
    travel = float(np.linalg.norm(m.waypoints[-1]))
    return m.speed < AT_REST and travel >= m.speed * PLAN_SECONDS + SETS_OFF


def is_slowing(m: Measurements) -> bool:
    """The moving car's plan slows down: the last waypoint (0.8 s ahead) at least :data:`SLOWS` m
    short of where the current speed takes it (braking for a light, a car ahead, a pedestrian)."""
    travel = float(np.linalg.norm(m.waypoints[-1]))
    return m.speed >= AT_REST and travel <= m.speed * PLAN_SECONDS - SLOWS


def is_stopping_for_light(m: Measurements) -> bool:
    """The car moves at :data:`STOPPING_SPEED` or more towards a red or yellow light and its plan
    ends at half its speed or less: a hard stop. The expert slows early and seldom shows one
    (0.2 % of the demo drives' windows); a speed hold's release does (recovery drives), and a
    planner that never learnt it runs the light when it comes too fast."""
    gap = (WAYPOINT_FRAMES[-1] - WAYPOINT_FRAMES[-2]) / FPS
    end_speed = float(np.linalg.norm(m.waypoints[-1] - m.waypoints[-2])) / gap
    return (
        m.light_state in ("red", "yellow")
        and m.speed >= STOPPING_SPEED
        and end_speed <= 0.5 * m.speed
    )


def starts_slowing(scene: Scene, t: int) -> bool:
    """At frame ``t`` the plan slows (:func:`is_slowing`) and the plan one step of
    ``max(WAYPOINT_FRAMES)`` frames before did not, so the path driven into ``t`` (the planner's
    odometry) does not yet show it: the onset of braking, which a planner that reads its speed and
    odometry cannot copy from them."""
    before = t - max(WAYPOINT_FRAMES)
    return (
        is_slowing(scene.measurements(t))
        and before >= 0
        and not is_slowing(scene.measurements(before))
    )


def perturbed_labels(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Per frame of ``scene``: whether its waypoints (the next ``max(WAYPOINT_FRAMES)`` frames'
    poses) were shaped by perturbed controls (a recovery drive's,
    :mod:`scenes.procedural.recovery`), so that they show the perturbation, not the driver; and
    whether a perturbation ended within :data:`RECOVERY_FRAMES` before it (the driver
    recovering)."""
    perturbed = np.array([scene.measurements(i).perturbed for i in range(len(scene))], dtype=bool)
    horizon = max(WAYPOINT_FRAMES)
    ahead = np.concatenate([perturbed, np.zeros(horizon, dtype=bool)])
    behind = np.concatenate([np.zeros(RECOVERY_FRAMES, dtype=bool), perturbed])
    shown = np.array([ahead[t : t + horizon].any() for t in range(len(scene))], dtype=bool)
    after = np.array([behind[t : t + RECOVERY_FRAMES].any() for t in range(len(scene))])
    return shown, after & ~shown


def path_distances(scene: Scene) -> np.ndarray:
    """Metres driven from the first frame of ``scene`` to each frame (from the recorded poses)."""
    xy = np.array([(m.x, m.y) for m in (scene.measurements(i) for i in range(len(scene)))])
    steps = np.linalg.norm(np.diff(xy, axis=0), axis=1) if len(xy) > 1 else np.zeros(0)
    return np.concatenate([[0.0], np.cumsum(steps)])


def maneuver_groups(
    dataset: DriveDataset,
    before: int,
    after: int,
    approach_m: float = 0.0,
    slowing: bool = False,
    stopping: bool = False,
) -> dict[str, np.ndarray]:
    """Dataset indices by what the expert does: "departure" for windows where the car at rest sets
    off (:func:`is_departure`); "left" / "straight" / "right" for windows from ``before`` frames
    before to ``after`` frames after a junction entry, by their waypoints' maneuver (so the turns
    are their first frames, where the instruction decides); "approach" for the windows before that
    within ``approach_m`` metres of the entry, at any speed (told where to turn and still driving
    straight: braking for a light or queued, the car covers that distance in many frames, and a
    planner that never saw it turns early); "other" for the rest (open road, and the rest of each
    turn, which the turning car's own motion already shows). Windows whose waypoints show a
    perturbation (:func:`perturbed_labels`) are in no group; "recovery" holds the windows after a
    perturbation (outside junction entry zones), whose futures are the driver's recovery. With
    ``slowing``, "slowing" holds the other windows where the plan starts to slow down
    (:func:`starts_slowing`: 2 % of the demo drives' windows; a planner fed its own speed and path
    keeps them, behaviour cloning's inertia problem, unless it sees these often). With
    ``stopping``, "stopping" holds the windows stopping hard for a red light
    (:func:`is_stopping_for_light`), before every other group but departures. Every window of a
    scene tagged ``source: onpolicy`` (a model's drive labelled by the expert,
    :mod:`closedloop.onpolicy`) is in "onpolicy" alone."""
    entries: dict[int, list[int]] = {}
    driven: dict[int, np.ndarray] = {}
    perturbed: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    groups: dict[str, list[int]] = {name: [] for name in GROUPS}
    onpolicy = [scene.tags.get("source") == ONPOLICY_SOURCE for scene in dataset.scenes]
    for k, (s, t) in enumerate(dataset.index):
        scene = dataset.scenes[s]
        if onpolicy[s]:
            groups["onpolicy"].append(k)
            continue
        if s not in entries:
            entries[s] = junction_entries(scene)
            driven[s] = path_distances(scene) if approach_m > 0 else np.zeros(0)
            perturbed[s] = perturbed_labels(scene)
        shown, recovering = perturbed[s]
        if shown[t]:
            continue
        m = scene.measurements(t)
        if is_departure(m):
            groups["departure"].append(k)
        elif stopping and is_stopping_for_light(m):
            groups["stopping"].append(k)
        elif any(e - before <= t <= e + after for e in entries[s]):
            groups[path_maneuver(m.waypoints)].append(k)
        elif recovering[t]:
            groups["recovery"].append(k)
        elif slowing and starts_slowing(scene, t):
            groups["slowing"].append(k)
        elif approach_m > 0 and any(
            t < e and driven[s][e] - driven[s][t] <= approach_m for e in entries[s]
        ):
            groups["approach"].append(k)
        else:
            groups["other"].append(k)
    return {name: np.asarray(ks, dtype=np.int64) for name, ks in groups.items()}


class StratifiedSampler(Sampler[int]):
    """An endless stream drawing group g with probability ``shares[g]`` (empty groups' shares go to
    the others), then a uniform member of it: with replacement, so small groups (the turns) are seen
    as often as their share says.

    Position p's draw depends only on ``(seed, p)``, so a resumed run starts at ``start`` (samples
    drawn so far, over all ranks) and continues exactly; rank r draws
    ``start + r, start + r + world, ...``.
    """

    def __init__(
        self,
        groups: Sequence[np.ndarray],
        shares: Sequence[float],
        seed: int,
        start: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        weights = np.array(
            [w if len(g) else 0.0 for g, w in zip(groups, shares, strict=True)], dtype=np.float64
        )
        if weights.sum() <= 0:
            raise ValueError("no group with a positive share has members")
        self.groups, self.cumulative = (
            [np.asarray(g) for g in groups],
            np.cumsum(weights / weights.sum()),
        )
        self.seed, self.start, self.rank, self.world = seed, start, rank, world

    def __iter__(self) -> Iterator[int]:
        p = self.start + self.rank
        while True:
            rng = np.random.default_rng([self.seed, p])
            g = min(
                int(np.searchsorted(self.cumulative, rng.random(), side="right")),
                len(self.groups) - 1,
            )
            yield int(self.groups[g][rng.integers(len(self.groups[g]))])
            p += self.world


class PlannerData:
    """The windows of planner batches and how they are drawn: ``junction_share`` from the three
    junction maneuver groups in equal parts, ``departure_share`` from departures,
    ``approach_share`` from junction approaches (``approach_m``), ``recovery_share`` from the
    windows after a recovery drive's perturbations, ``slowing_share`` from windows where the plan
    starts to slow down, ``stopping_share`` from hard stops for a red light, ``onpolicy_share``
    from on-policy drives (DAgger), the rest from all other windows
    (see :class:`PlannerConfig` and :func:`maneuver_groups`). ``windows`` serves ``dataset``'s
    windows by the same indices (default ``dataset`` itself; a
    :class:`lmgendrive.train.tokens.PlannerWindows` to read cached vision tokens)."""

    def __init__(
        self,
        dataset: DriveDataset,
        junction_share: float,
        entry_zone: tuple[int, int],
        windows: Dataset | None = None,
        departure_share: float = 0.0,
        approach_share: float = 0.0,
        approach_m: float = 0.0,
        recovery_share: float = 0.0,
        slowing_share: float = 0.0,
        stopping_share: float = 0.0,
        onpolicy_share: float = 0.0,
    ):
        self.windows = dataset if windows is None else windows
        groups = maneuver_groups(
            dataset,
            *entry_zone,
            approach_m=approach_m if approach_share else 0.0,
            slowing=slowing_share > 0,
            stopping=stopping_share > 0,
        )
        if recovery_share and not len(groups["recovery"]):
            raise ConfigError(
                "planner recovery_share is set but no drive is a recovery drive: set "
                "recovery_routes"
            )
        self.groups = [groups[name] for name in GROUPS]
        if onpolicy_share and not len(groups["onpolicy"]):
            raise ConfigError("planner onpolicy_share is set but no drive is an on-policy drive")
        named = (
            departure_share,
            approach_share,
            recovery_share,
            slowing_share,
            stopping_share,
            onpolicy_share,
        )
        other = max(0.0, 1.0 - junction_share - sum(named))
        self.shares = [junction_share / 3] * 3 + [*named, other]
        log.info("planner windows: %s", ", ".join(f"{name} {len(g)}" for name, g in groups.items()))

    def loader(
        self, batch_size: int, seed: int, start: int, workers: int, rank: int = 0, world: int = 1
    ) -> DataLoader:
        """Planner batches from stream position ``start``."""
        sampler = StratifiedSampler(self.groups, self.shares, seed, start, rank, world)
        return make_loader(
            self.windows, batch_size, seed, start, workers, rank, world, sampler=sampler
        )


class StreamSampler(Sampler[int]):
    """An endless stream of indices: epoch e is ``default_rng([seed, e]).permutation(n)``.

    It starts at global position ``start`` (samples consumed so far, over all ranks) and yields
    positions ``start + rank, start + rank + world, ...`` so ranks read disjoint samples.
    """

    def __init__(self, n: int, seed: int, start: int = 0, rank: int = 0, world: int = 1):
        self.n, self.seed, self.start, self.rank, self.world = n, seed, start, rank, world

    def __iter__(self) -> Iterator[int]:
        epoch, perm = -1, np.empty(0, dtype=np.int64)
        p = self.start + self.rank
        while True:
            if p // self.n != epoch:
                epoch = p // self.n
                perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            yield int(perm[p % self.n])
            p += self.world


def make_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    start: int,
    workers: int,
    rank: int = 0,
    world: int = 1,
    sampler: Sampler[int] | None = None,
) -> DataLoader:
    """A DataLoader over ``dataset`` from stream position ``start`` (of a :class:`StreamSampler`
    unless ``sampler`` is given); it never touches the global torch RNG (its own generator), so
    loading does not perturb the training noise."""
    sampler = sampler or StreamSampler(len(dataset), seed, start, rank, world)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
        prefetch_factor=2 if workers else None,
    )
