"""Table schemas with per-value rules, and validation that reports every problem at once.

pyarrow checks types; the rules a value must follow beyond its type (allowed values, ranges,
patterns, non-null) live here, next to the column, so every reader of a file validates it the
same way and a user gets one message listing each bad row, column and value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from schemas.errors import SchemaError

MAX_REPORTED = 50


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    description: str
    nullable: bool = False
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    pattern: str | None = None

    def allowed(self) -> str:
        """What a valid value looks like, in words."""
        parts = [str(self.type)]
        if self.choices is not None:
            parts.append("one of " + ", ".join(map(str, self.choices)))
        if self.min is not None:
            parts.append(f">= {self.min:g}")
        if self.max is not None:
            parts.append(f"<= {self.max:g}")
        if self.pattern is not None:
            parts.append(f"matching /{self.pattern}/")
        if pa.types.is_floating(self.type):
            parts.append("finite")
        if not self.nullable:
            parts.append("not null")
        return ", ".join(parts)

    def check(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, float) and not math.isfinite(value):
            return False  # NaN passes every comparison; no column of ours holds one
        if self.choices is not None and value not in self.choices:
            return False
        if self.min is not None and value < self.min:
            return False
        if self.max is not None and value > self.max:
            return False
        return not (self.pattern is not None and not re.fullmatch(self.pattern, str(value)))


@dataclass(frozen=True)
class RowRule:
    """A rule between columns of one row: ``holds(row)`` on rows whose ``columns`` are valid."""

    columns: tuple[str, ...]
    description: str
    holds: Callable[[dict], bool]


@dataclass(frozen=True)
class TableSchema:
    name: str
    version: int
    columns: tuple[Column, ...]
    metadata: dict = field(default_factory=dict)
    rules: tuple[RowRule, ...] = ()

    @property
    def arrow(self) -> pa.Schema:
        fields = [pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns]
        return pa.schema(
            fields, metadata={"schema": self.name, "schema_version": str(self.version)}
        )

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


def problems(table: pa.Table, schema: TableSchema) -> list[str]:
    """Every problem of ``table`` against ``schema``: missing / unexpected / mistyped columns,
    then each bad value as ``row R, column C: value V (allowed: ...)``."""
    out: list[str] = []
    present = set(table.column_names)
    for c in schema.columns:
        if c.name not in present:
            out.append(f"missing column {c.name!r} ({c.description}; {c.allowed()})")
    out += [
        f"unexpected column {n!r} (valid columns: {', '.join(schema.names)})"
        for n in table.column_names
        if n not in schema.names
    ]
    for c in schema.columns:
        if c.name not in present:
            continue
        col = table.column(c.name)
        if not _castable(col.type, c.type):
            out.append(f"column {c.name!r} has type {col.type}, expected {c.type}")
            continue
        for row, value in enumerate(col.to_pylist()):
            if not c.check(value):
                out.append(
                    f"row {row}, column {c.name!r}: value {value!r} (allowed: {c.allowed()})"
                )
    out += _rule_problems(table, schema)
    if schema.metadata.get("unique") and schema.metadata["unique"] in present:
        key = schema.metadata["unique"]
        seen: dict[Any, int] = {}
        for row, value in enumerate(table.column(key).to_pylist()):
            if value in seen:
                out.append(
                    f"row {row}, column {key!r}: value {value!r} duplicates row {seen[value]}"
                )
            seen.setdefault(value, row)
    return out


def _rule_problems(table: pa.Table, schema: TableSchema) -> list[str]:
    out = []
    for rule in schema.rules:
        if not all(c in table.column_names for c in rule.columns):
            continue
        cols = [table.column(c).to_pylist() for c in rule.columns]
        checks = [schema.column(c).check for c in rule.columns]
        for row, values in enumerate(zip(*cols, strict=True)):
            if not all(ok(v) for ok, v in zip(checks, values, strict=True)):
                continue  # already reported per column
            if not rule.holds(dict(zip(rule.columns, values, strict=True))):
                got = ", ".join(f"{c} {v!r}" for c, v in zip(rule.columns, values, strict=True))
                out.append(f"row {row}: {got} (allowed: {rule.description})")
    return out


def validate(table: pa.Table, schema: TableSchema, source: str = "table") -> pa.Table:
    """Raise :class:`SchemaError` listing every problem, else return ``table`` cast to the
    schema."""
    found = problems(table, schema)
    if found:
        shown = found[:MAX_REPORTED]
        more = f"\n  ... and {len(found) - MAX_REPORTED} more" if len(found) > MAX_REPORTED else ""
        raise SchemaError(
            f"{source}: {len(found)} problem(s) against schema {schema.name} "
            f"v{schema.version}:\n  " + "\n  ".join(shown) + more
        )
    return table.select(schema.names).cast(schema.arrow)


def _castable(src: pa.DataType, dst: pa.DataType) -> bool:
    if src == dst or pa.types.is_null(src):
        return True
    if pa.types.is_integer(dst):
        return pa.types.is_integer(src)
    if pa.types.is_floating(dst):
        return pa.types.is_integer(src) or pa.types.is_floating(src)
    if pa.types.is_string(dst) or pa.types.is_large_string(dst):
        return pa.types.is_string(src) or pa.types.is_large_string(src)
    if pa.types.is_list(dst) and (pa.types.is_list(src) or pa.types.is_large_list(src)):
        return _castable(src.value_type, dst.value_type) or pa.types.is_null(src.value_type)
    return False
