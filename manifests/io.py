"""Reading and writing task manifests: Parquet, or JSON Lines on input; always validated."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.errors import BadInputError, SchemaError
from schemas.spec import validate
from schemas.tables import TASK
from storage.atomic import atomic_path


def read_manifest(path: str | Path) -> pa.Table:
    """A manifest from ``.parquet`` or ``.jsonl``, validated against the task schema."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: manifest not found")
    if path.suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise BadInputError(f"{path}: not a readable Parquet file: {e}") from None
    elif path.suffix in (".jsonl", ".ndjson"):
        table = _read_jsonl(path)
    else:
        raise BadInputError(
            f"{path}: unknown manifest format {path.suffix!r}; valid: .parquet, .jsonl"
        )
    return validate(table, TASK, str(path))


def _read_jsonl(path: Path) -> pa.Table:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInputError(f"{path}:{n}: not valid JSON: {e.msg}") from None
        if not isinstance(row, dict):
            raise BadInputError(f"{path}:{n}: expected a JSON object per line")
        rows.append(row)
    if not rows:
        return TASK.arrow.empty_table()
    bad = [
        f"line {n}, column {c.name!r}: value {r[c.name]!r} (allowed: {c.allowed()})"
        for n, r in enumerate(rows, start=1)
        for c in TASK.columns
        if c.name in r and r[c.name] is not None and not _json_type_ok(r[c.name], c.type)
    ]
    if bad:
        raise SchemaError(
            f"{path}: {len(bad)} problem(s) against schema task v{TASK.version}:\n  "
            + "\n  ".join(bad[:50])
        )
    names = list(dict.fromkeys(k for r in rows for k in r))
    types = {f.name: f.type for f in TASK.arrow}
    return pa.table({k: pa.array([r.get(k) for r in rows], type=types.get(k)) for k in names})


def _json_type_ok(value: object, typ: pa.DataType) -> bool:
    if pa.types.is_boolean(typ):
        return isinstance(value, bool)
    if pa.types.is_integer(typ):
        return isinstance(value, int) and not isinstance(value, bool)
    if pa.types.is_floating(typ):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if pa.types.is_string(typ):
        return isinstance(value, str)
    if pa.types.is_list(typ):
        return isinstance(value, list) and all(_json_type_ok(v, typ.value_type) for v in value)
    return True


def write_manifest(table: pa.Table, path: str | Path) -> Path:
    """Validate and write a manifest as Parquet, atomically."""
    path = Path(path)
    table = validate(table, TASK, str(path))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path
