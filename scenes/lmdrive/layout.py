"""The names of an LMDrive route folder and dataset root, shared by the reader and the writer.

One route folder (LMDrive's layout, so real recordings drop in)::

    <route>/rgb_front/ rgb_left/ rgb_right/ %04d.{jpg,png}   or   rgb_full/%04d.jpg (stacked views)
    <route>/measurements/%04d.json    <route>/actors_data/%04d.json (optional)
    <route>/navigation_instruction_list.txt    <route>/notice_instruction_list.json
    <route>/lmgd_scene.json           written by us only: name, fps, views, size, tags
    <root>/dataset_index.txt          lines ``<route_dir>/ <n_frames>``

Real LMDrive keeps the two instruction files at the dataset root, keyed by ``route_path``; a route
without its own files reads them from its parent folder (or from the root given to
:func:`~scenes.lmdrive.scene.open_root`).
"""

from __future__ import annotations

MEASUREMENTS_DIR = "measurements"
ACTORS_DIR = "actors_data"
FULL_DIR = "rgb_full"
FULL_ORDER = ("front", "left", "right", "rear")  # rows of rgb_full, top to bottom
NAV_FILE = "navigation_instruction_list.txt"
NOTICE_FILE = "notice_instruction_list.json"
INDEX_FILE = "dataset_index.txt"
META_FILE = "lmgd_scene.json"
LMGD_KEY = "lmgd"  # the measurements key holding the exact contract dict (written by us only)
IMAGE_EXTS = ("png", "jpg")
