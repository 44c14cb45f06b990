"""The ``lmgd`` command line.

Exit codes: 0 done, 2 bad input (the message names the file, row or key and what is valid),
1 failure at run time.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from lmgendrive.errors import BadInputError, ConfigError, LmgdError

log = logging.getLogger("lmgd")

DEMO_DRIVES = [  # (town seed, route seed, weather) shown by ``lmgd demo`` until the full job lands
    (1, 3, "clear_noon"), (2, 11, "cloudy"), (3, 5, "rain"), (4, 8, "fog"), (5, 2, "sunset"), (6, 4, "night"),
]


def _size(text: str) -> tuple[int, int]:
    """``128`` or ``128x224`` (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 16 or max(parts) > 1024:
        raise argparse.ArgumentTypeError(f"size must be N or HxW with 16 <= N <= 1024, got {text!r}")
    return parts[0], parts[1]


def _progress(total: int, desc: str, unit: str = "frame"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=None)


# ----------------------------------------------------------------------------- scenes
def cmd_scenes_render(args: argparse.Namespace) -> int:
    from scenes.lmdrive import write_index, write_route
    from scenes.procedural.drive import DriveSpec, ProceduralScene

    spec = DriveSpec(args.town_seed, args.route_seed, args.weather, args.frames, args.size, tuple(args.turns))
    scene = ProceduralScene(spec)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    with _progress(len(scene), f"render {scene.name}") as bar:
        route = write_route(scene, root / scene.name, overwrite=args.overwrite, on_frame=lambda _: bar.update())
    routes = sorted(p for p in root.iterdir() if (p / "measurements").is_dir() and not p.name.endswith(".partial"))
    index = write_index(root, routes)
    print(f"wrote {route} ({len(scene)} frames); {index} lists {len(routes)} route(s)")
    return 0


def _open_scenes(path: Path):
    from scenes.lmdrive import open_root, open_route

    if not path.exists():
        raise BadInputError(f"{path}: no such route folder or dataset root")
    if (path / "dataset_index.txt").is_file():
        return open_root(path)
    return [open_route(path)]


def cmd_scenes_sheet(args: argparse.Namespace) -> int:
    from scenes.sheet import contact_sheet, write_png

    scenes = _open_scenes(Path(args.dir))
    out = write_png(contact_sheet(scenes, args.frames, args.width), args.out)
    print(f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from scenes.procedural.drive import DriveSpec, ProceduralScene
    from scenes.sheet import contact_sheet, write_png

    out = Path(args.out)
    scenes = []
    with _progress(len(DEMO_DRIVES), "simulate drives", unit="drive") as bar:
        for town, route, weather in DEMO_DRIVES:
            scenes.append(ProceduralScene(DriveSpec(town, route, weather, args.frames, args.size)))
            bar.update()
    with _progress(len(scenes), "render contact sheet", unit="drive") as bar:
        rows = []
        for scene in scenes:
            rows.append(contact_sheet([scene], args.frames_per_drive))
            bar.update()
    import numpy as np

    sheet = write_png(np.concatenate(rows, axis=0), out / "drives.png")
    print(f"demo: contact sheet of {len(scenes)} procedural drives -> {sheet}")
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmgd", description="LMGenDrive synthetic driving-video pipeline.")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    demo = verbs.add_parser("demo", help="run the main job on the embedded default",
                            description="Render procedural drives across weathers and write their contact sheet.")
    demo.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    demo.add_argument("--frames", type=int, default=120, help="frames per drive (default: 120)")
    demo.add_argument("--frames-per-drive", type=int, default=3, help="rows per drive on the sheet")
    demo.add_argument("--size", type=_size, default=(128, 128), help="image size N or HxW (default: 128)")
    demo.set_defaults(func=cmd_demo)

    scenes = verbs.add_parser("scenes", help="seed scenes: render procedural drives, draw contact sheets")
    sv = scenes.add_subparsers(dest="scenes_verb", metavar="VERB", required=True)
    r = sv.add_parser("render", help="render one procedural drive into an LMDrive-format dataset root",
                      description="Simulate and render one drive; write it as an LMDrive route folder "
                                  "OUT/<name>/ and update OUT/dataset_index.txt.")
    r.add_argument("--town-seed", type=int, required=True)
    r.add_argument("--route-seed", type=int, required=True)
    r.add_argument("--weather", default="clear_noon",
                   help="clear_noon, cloudy, rain, fog, sunset or night (default: clear_noon)")
    r.add_argument("--frames", type=int, default=200, help="frames at 10 Hz (default: 200)")
    r.add_argument("--size", type=_size, default=(128, 128), help="image size N or HxW (default: 128)")
    r.add_argument("--turns", nargs="*", default=[], metavar="TURN",
                   help="force the first maneuvers: left, straight, right")
    r.add_argument("--out", required=True, help="dataset root folder")
    r.add_argument("--overwrite", action="store_true", help="replace an existing route of the same name")
    r.set_defaults(func=cmd_scenes_render)
    s = sv.add_parser("sheet", help="draw a contact sheet of a route folder or dataset root")
    s.add_argument("dir", help="route folder or dataset root (with dataset_index.txt)")
    s.add_argument("--out", required=True, help="PNG file to write")
    s.add_argument("--frames", type=int, default=4, help="frames per route (default: 4)")
    s.add_argument("--width", type=int, default=672, help="sheet width in pixels (default: 672)")
    s.set_defaults(func=cmd_scenes_sheet)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lmgd``; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        _check_counts(args)
        return int(args.func(args) or 0)
    except LmgdError as e:
        print(f"lmgd: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("lmgd: interrupted", file=sys.stderr)
        return 130


def _check_counts(args: argparse.Namespace) -> None:
    for key in ("frames", "frames_per_drive", "width"):
        value = getattr(args, key, None)
        if value is not None and value < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= 1, got {value}")


if __name__ == "__main__":
    sys.exit(main())
