"""Counting a manifest's tasks per category, horizon, weather and tag, as plain-text tables."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

TAGS = ("night", "pedestrians", "red_light", "junction", "misleading", "counterfactual")


def counts(table: pa.Table) -> dict[str, Counter]:
    """Task counts keyed by grouping ('category', 'horizon', 'weather', 'tag')."""
    rows = table.to_pylist()
    out = {key: Counter(r[key] for r in rows) for key in ("category", "horizon", "weather")}
    out["tag"] = Counter({tag: sum(bool(r[tag]) for r in rows) for tag in TAGS})
    return out


def format_stats(table: pa.Table) -> str:
    """The counts as aligned tables, with totals and distinct seed points and scenes."""
    rows = table.to_pylist()
    seed_points = {(r["scene"], r["start_frame"]) for r in rows}
    lines = [
        f"{len(rows)} tasks, {len(seed_points)} seed points, "
        f"{len({r['scene'] for r in rows})} scenes, {sum(r['samples'] for r in rows)} samples"
    ]
    for key, counter in counts(table).items():
        width = max([len(str(k)) for k in counter] + [len(key)])
        lines += ["", f"{key:<{width}}  tasks", f"{'-' * width}  -----"]
        for k in sorted(counter, key=lambda k: (isinstance(k, str), k)):
            lines.append(f"{k!s:<{width}}  {counter[k]:>5}")
    return "\n".join(lines)
