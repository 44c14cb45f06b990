"""A route's raw instruction records: from its own instruction files, else from the dataset root's
(keyed by ``route_path``), each with where it came from (for messages)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from scenes.lmdrive.files import read_json_object, read_text
from scenes.lmdrive.layout import NAV_FILE, NOTICE_FILE
from schemas.errors import SceneFormatError


@dataclass
class Records:
    """Raw instruction records of one route, each with where it came from (for messages)."""

    nav: list[tuple[str, dict]] = field(default_factory=list)
    notices: list[tuple[str, dict]] = field(default_factory=list)


def _read_nav(path: Path) -> list[tuple[str, dict]]:
    """``navigation_instruction_list.txt``: one JSON object per line."""
    text = read_text(path)
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise SceneFormatError(f"{path}:{n}: malformed JSON line ({e})") from e
        if not isinstance(rec, dict):
            raise SceneFormatError(f"{path}:{n}: expected a JSON object per line")
        records.append((f"{path}:{n}", rec))
    return records


def _read_notices(path: Path) -> dict[str, list[tuple[str, dict]]]:
    """``notice_instruction_list.json``: route path -> list of notice records."""
    data = read_json_object(path)
    if not all(isinstance(v, list) for v in data.values()):
        raise SceneFormatError(f"{path}: expected an object mapping route paths to lists")
    return {
        route: [(f"{path}[{route!r}][{k}]", rec) for k, rec in enumerate(entries)]
        for route, entries in data.items()
    }


def root_records(root: Path) -> dict[Path, Records]:
    """Dataset-level instruction files, grouped by the route folder they name."""
    grouped: dict[Path, Records] = {}
    if (root / NAV_FILE).is_file():
        for where, rec in _read_nav(root / NAV_FILE):
            if not isinstance(rec.get("route_path"), str):
                raise SceneFormatError(f"{where}: missing 'route_path'")
            grouped.setdefault((root / rec["route_path"]).resolve(), Records()).nav.append(
                (where, rec)
            )
    if (root / NOTICE_FILE).is_file():
        for route, entries in _read_notices(root / NOTICE_FILE).items():
            grouped.setdefault((root / route).resolve(), Records()).notices.extend(entries)
    return grouped


def route_records(route: Path, shared: Mapping[Path, Records] | None) -> Records:
    """A route's own instruction files, else its records in the dataset-level files."""
    own_nav, own_notice = route / NAV_FILE, route / NOTICE_FILE
    if shared is None and not (own_nav.is_file() and own_notice.is_file()):
        shared = root_records(route.parent)
    fallback = (shared or {}).get(route.resolve(), Records())
    nav = _read_nav(own_nav) if own_nav.is_file() else fallback.nav
    if own_notice.is_file():
        notices = [e for entries in _read_notices(own_notice).values() for e in entries]
    else:
        notices = fallback.notices
    return Records(nav, notices)
