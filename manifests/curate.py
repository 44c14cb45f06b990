"""Curating corner cases: select tasks by instruction and scene tags, expand counterfactual
instructions at junctions, balance categories, de-duplicate and sample reproducibly."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pyarrow as pa

from manifests.build import finish_row, instruction_fields
from scenes.procedural.instructions import make_instruction
from schemas.job import CurateSpec
from schemas.scene import TYPE_ASKING_FOR, maneuver_asked
from schemas.spec import validate
from schemas.tables import TASK


def matches(row: dict, spec: CurateSpec) -> bool:
    """Whether a task passes every filter of ``spec`` (unset filters pass everything)."""
    checks = [
        spec.categories is None or row["category"] in spec.categories,
        spec.instruction_ids is None or row["instruction_id"] in spec.instruction_ids,
        spec.text is None or re.search(spec.text, row["instruction"]) is not None,
        spec.weathers is None or row["weather"] in spec.weathers,
    ]
    for tag in ("misleading", "night", "pedestrians", "red_light", "junction"):
        wanted = getattr(spec, tag)
        checks.append(wanted is None or row[tag] == wanted)
    return all(checks)


def task_maneuver(row: dict) -> str | None:
    """The maneuver a task's instruction asks for ('left', 'straight', 'right', 'stop'), if any."""
    return maneuver_asked(json.loads(row["instruction_args"]).get("type", ""))


def counterfactuals(row: dict, with_misleading: bool, base_seed: int) -> list[dict]:
    """Tasks asking for every other feasible maneuver at the row's junction (and, on request,
    the infeasible turns, flagged misleading)."""
    options = list(row["junction_options"])
    if not options:
        return []
    feasible = [*options, "stop"]
    wanted = feasible + (
        [t for t in ("left", "right") if t not in options] if with_misleading else []
    )
    out = []
    for maneuver in wanted:
        if maneuver == task_maneuver(row):
            continue
        rng = np.random.default_rng(
            int(hashlib.sha256(f"{row['task_id']}:{maneuver}".encode()).hexdigest()[:8], 16)
        )
        ins = make_instruction(TYPE_ASKING_FOR[maneuver], rng, misleading=maneuver not in feasible)
        out.append(
            finish_row({**row, **instruction_fields(ins), "counterfactual": True}, base_seed)
        )
    return out


def curate(table: pa.Table, spec: CurateSpec) -> pa.Table:
    """Apply ``spec`` to a manifest; the result keeps the input's order
    (expansions follow their row)."""
    rows = [r for r in table.to_pylist() if matches(r, spec)]
    if spec.counterfactual:
        expanded = []
        for r in rows:
            expanded += [r, *counterfactuals(r, spec.with_misleading, spec.seed)]
        rows = expanded
    rows = list({r["task_id"]: r for r in rows}.values())  # de-duplicate, first occurrence wins
    rng = np.random.default_rng(spec.seed)
    if spec.cap_per_category is not None:
        keep: list[int] = []
        for cat in sorted({r["category"] for r in rows}):
            idx = [i for i, r in enumerate(rows) if r["category"] == cat]
            if len(idx) > spec.cap_per_category:
                idx = sorted(rng.choice(idx, size=spec.cap_per_category, replace=False).tolist())
            keep += idx
        rows = [rows[i] for i in sorted(keep)]
    if spec.sample is not None and len(rows) > spec.sample:
        rows = [
            rows[i] for i in sorted(rng.choice(len(rows), size=spec.sample, replace=False).tolist())
        ]
    return validate(pa.Table.from_pylist(rows, schema=TASK.arrow), TASK, "curated manifest")
