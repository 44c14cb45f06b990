"""QA outputs: ``report.md`` (Table-5 layout with N and intervals), ``horizon.png`` and
``qa.json``."""

from __future__ import annotations

import io
import json
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from qa.config import QAConfig  # noqa: E402
from qa.result import ADHERENCE_VIEWS, QAResult  # noqa: E402
from schemas.scene import INSTRUCTION_CATEGORIES, VIEWS  # noqa: E402
from storage.store import Storage  # noqa: E402

NAMES = {
    "fid": "FID",
    "fid_inf": "FID∞",
    "fvd": "FVD",
    "fd_drive": "FD-drive",
    "instruction_adherence": "Instruction adherence",
    "action_video_agreement": "Action–video r",
}
N_MEANS = {
    "fid": "frames, views pooled",
    "fvd": "16-frame clips, views pooled",
    "fd_drive": "multi-view frames",
    "instruction_adherence": "samples with a feasible turn instruction",
    "action_video_agreement": "autoregressive steps (front camera)",
}
BASELINE_NAMES = {"repeat_last": "repeat last frame", "warp_only": "warp only"}
BASELINE_STYLES = {"repeat_last": ("--", "s"), "warp_only": ((0, (6, 2, 1, 2)), "^")}
SMALL_N = 2048


def num(v: float | None) -> str:
    if v is None:
        return "–"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3g}"


def cell(row: dict | None, with_n: bool = True) -> str:
    if row is None:
        return "–"
    text = num(row["value"])
    if row["ci_low"] is not None:
        text += f" [{num(row['ci_low'])}, {num(row['ci_high'])}]"
    return text + (f" (N={row['n_generated']})" if with_n else "")


def markdown(config: QAConfig, result: QAResult) -> str:
    rows = result.rows
    horizons = sorted({r["horizon"] for r in rows})
    present = [m for m in NAMES if any(r["metric"] == m for r in rows)]
    lines = [
        f"# QA report: `{config.output}`",
        "",
        "Generated frames only (seed frames excluded) against the recorded future of the same "
        "scene from the same start frame, at the generated resolution; equal N real and "
        "generated. Protocol: `qa/PROTOCOL.md`. Intervals are bootstrap 95 % (FD: paired, over "
        "task groups; adherence: Wilson).",
        "",
        "## Quality versus horizon",
        "",
    ]
    header, table = _horizon_table(result, horizons, present)
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|---:|" + "---|" * (len(header) - 1))
    lines += ["| " + " | ".join(table[h]) + " |" for h in horizons]
    lines += [
        "",
        "N counts " + "; ".join(f"{NAMES[m]}: {N_MEANS[m]}" for m in present if m in N_MEANS) + ".",
    ]
    if result.baselines:
        lines += [
            "",
            "Baselines, no generation, from the same recorded futures, samples, task groups and "
            "bootstrap resamples as the figure beside them (same N): *repeat last frame* holds "
            "each sample's last seed frame for the horizon; *warp only* moves it by the sample's "
            "own plan (`lmgendrive.ego_warp.warp_only`). A model should beat both.",
        ]
    if "instruction_adherence" in present:
        lines += [
            "",
            "Instruction adherence (plan) classifies the predicted trajectory, (video) the heading "
            "change of the generated front video.",
        ]
    small = sorted(
        {
            r["n_generated"]
            for r in rows
            if (r["metric"], r["view"], r["category"]) == ("fid", "pooled", "all")
            and r["n_generated"] < SMALL_N
        }
    )
    if small:
        lines += [
            "",
            f"> Small N: FID from {small[0]} frames. Between two samples of one distribution the "
            "2048-d Fréchet distance is about 1055 at N=256, 373 at 2048 and 93 at 8192, so "
            "compare figures at equal N only, or use FID∞ (the 1/N extrapolation).",
        ]
    lines += _breakdown(rows, horizons, "view", VIEWS, "Per camera view")
    lines += _breakdown(
        rows, horizons, "category", INSTRUCTION_CATEGORIES, "Per instruction category"
    )
    lines += _trajectory(result)
    if result.gallery:
        lines += [
            "",
            "## Gallery",
            "",
            "The first sample of each task at the longest horizon, grouped by seed point: "
            "the last seed frame, then generated frames (`qa/gallery.py`).",
            "",
        ]
        lines += [f"![{name}]({name})" for name in result.gallery]
    notes = list(result.skipped.values()) + result.details.get("notes", [])
    if notes:
        lines += ["", "## Skipped and notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Extractors", ""] + [
        f"- {NAMES[m]}: {d}" for m, d in result.extractors.items()
    ]
    lines += [
        "",
        "## Files",
        "",
        "- `qa.json`: every row (schema `qa`), the baselines' figures (`baselines`: rows plus "
        "`baseline`), the groups, confusion matrices and FID\u221e fit points",
        "- `horizon.png`: the figures versus horizon",
        "- `stats/*.npz`: pooled statistics per metric, horizon and side (real, generated and "
        "each baseline; `mu`, `sigma` as pytorch-fid writes them, and `count`)",
        *(["- `gallery/*.png`: seed frames and generated futures"] if result.gallery else []),
        "",
    ]
    return "\n".join(lines)


def _horizon_table(
    result: QAResult, horizons: list[int], present: list[str]
) -> tuple[list[str], dict[int, list[str]]]:
    """The header and, per horizon, the cells of the per-horizon table: each Fréchet distance
    followed by its baselines, instruction adherence read from the plan and from the video."""
    rows = result.rows
    header, table = ["Horizon"], {h: [str(h)] for h in horizons}

    def column(name: str, found: list[dict], with_n: bool = True) -> None:
        header.append(name)
        for h in horizons:
            table[h].append(cell(next((r for r in found if r["horizon"] == h), None), with_n))

    for m in present:
        if m == "instruction_adherence":
            for source, view in ADHERENCE_VIEWS.items():
                found = _series(rows, m, view=view, category="turn")
                if found:
                    column(f"{NAMES[m]} ({source})", found)
            continue
        view = "front" if m == "action_video_agreement" else "pooled"
        column(NAMES[m], _series(rows, m, view=view), m != "fid_inf")
        for b, name in BASELINE_NAMES.items():
            found = [r for r in result.baselines if (r["metric"], r["baseline"]) == (m, b)]
            if found:
                column(f"{NAMES[m]} ({name})", found, with_n=False)
    return header, table


def _breakdown(
    rows: list[dict], horizons: list[int], axis: str, values: tuple[str, ...], title: str
) -> list[str]:
    found = [r for r in rows if r["metric"] in ("fid", "fvd", "fd_drive") and r[axis] in values]
    if not found:
        return []
    cols = [v for v in values if any(r[axis] == v for r in found)]
    out = [
        "",
        f"## {title}",
        "",
        "| Horizon | Metric | " + " | ".join(cols) + " |",
        "|---:|---|" + "---|" * len(cols),
    ]
    for h in horizons:
        for m in ("fid", "fvd", "fd_drive"):
            cells = [
                next(
                    (cell(r) for r in found if (r["metric"], r["horizon"], r[axis]) == (m, h, c)),
                    "–",
                )
                for c in cols
            ]
            if any(c != "–" for c in cells):
                out.append(f"| {h} | {NAMES[m]} | " + " | ".join(cells) + " |")
    return out


def _trajectory(result: QAResult) -> list[str]:
    out = []
    for source, key, what in (
        ("plan", "adherence", "the predicted trajectory"),
        ("video", "adherence_video", "the generated front video"),
    ):
        adherence = result.details.get(key, {})
        if not adherence:
            continue
        out += [
            "",
            f"## Instruction adherence ({source})",
            "",
            f"Instructed maneuver → maneuver of {what} (samples per cell).",
            "",
            "| Horizon | Instruction | left | straight | right | unclear |",
            "|---:|---|---|---|---|---|",
        ]
        for h, kinds in sorted(adherence.items()):
            for kind, table in kinds.items():
                for wanted, got in sorted(table.items()):
                    label = wanted + (" (misleading)" if kind == "misleading" else "")
                    out.append(
                        f"| {h} | {label} | "
                        + " | ".join(
                            str(got.get(p, 0)) for p in ("left", "straight", "right", "unclear")
                        )
                        + " |"
                    )
    agreement = result.details.get("agreement", {})
    if agreement:
        out += [
            "",
            "## Action–video agreement",
            "",
            "Pearson r between the per-step yaw of the predicted waypoints and the yaw measured on "
            "the front video; the recorded drive gives the estimator's ceiling.",
            "",
            "| Horizon | generated r | recorded r | steps |",
            "|---:|---|---|---|",
        ]
        for h, a in sorted(agreement.items()):
            out.append(f"| {h} | {num(a['generated_r'])} | {num(a['recorded_r'])} | {a['steps']} |")
    return out


FD_PANELS = (
    ("fid", "FID (Inception-v3)"),
    ("fvd", "FVD (I3D)"),
    ("fd_drive", "FD-drive (evaluator encoder)"),
)
NOTE_CHARS = 110  # a skipped metric's note under the figure: one line, fits 8 inches at 8 pt


def figure_layout(result: QAResult) -> tuple[list[tuple[str, str]], list[str]]:
    """The Fréchet panels ``horizon.png`` draws (metrics with figures) and one line per skipped
    metric saying why (the first sentence of the reason, shortened)."""
    panels = [(m, t) for m, t in FD_PANELS if _series(result.rows, m)]
    notes = []
    for metric, title in FD_PANELS:
        if (metric, title) in panels or metric not in result.skipped:
            continue
        reason = result.skipped[metric].split(". ")[0].split("\n")[0]
        reason = re.sub(r"(/[^\s/]+)+/([^\s/]+)", r".../\2", reason)  # report.md has the path
        name = title.split(" (")[0]
        line = reason if reason.startswith(name) else f"{name}: {reason}"
        notes.append(line if len(line) <= NOTE_CHARS else line[: NOTE_CHARS - 3] + "...")
    return panels, notes


def horizon_png(result: QAResult) -> bytes:
    """The Fréchet distances that were computed (FID and FID∞, FVD, FD-drive) and the trajectory
    figures against the horizon; a metric not computed is one line under the figure."""
    rows = result.rows
    horizons = sorted({r["horizon"] for r in rows})
    panels, notes = figure_layout(result)
    ncols = 2 if panels else 1
    nrows = -(-(len(panels) + 1) // ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(max(5.5 * ncols, 8.0 if notes else 0.0), 4 * nrows + 0.25 * len(notes)),
        squeeze=False,
        constrained_layout=True,
    )
    for ax, (metric, title) in zip(axes.flat, panels, strict=False):
        _fd_panel(ax, rows, result.baselines, metric, title)
    _trajectory_panel(axes.flat[len(panels)], rows, horizons)
    for ax in list(axes.flat)[len(panels) + 1 :]:
        ax.remove()
    if notes:
        fig.supxlabel("\n".join(notes), fontsize=8, color="0.35", ha="left", x=0.02)
    for ax in axes.flat[: len(panels) + 1]:
        ax.set_xscale("log", base=2)
        ax.set_xlim(min(horizons) / 1.35, max(horizons) * 1.35)
        ax.set_xticks(horizons, [str(h) for h in horizons])
        ax.minorticks_off()
        ax.set_xlabel("horizon (generated frames at 10 Hz)")
        ax.grid(alpha=0.3)
    fig.suptitle("Generation quality versus horizon (95 % intervals; N per point)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _series(
    rows: list[dict], metric: str, view: str = "pooled", category: str = "all"
) -> list[dict]:
    return sorted(
        (r for r in rows if (r["metric"], r["view"], r["category"]) == (metric, view, category)),
        key=lambda r: r["horizon"],
    )


def _errorbar(ax, series: list[dict], label: str, **style) -> None:
    x = [r["horizon"] for r in series]
    y = [r["value"] for r in series]
    err = [
        [max(0.0, r["value"] - r["ci_low"]) if r["ci_low"] is not None else 0 for r in series],
        [max(0.0, r["ci_high"] - r["value"]) if r["ci_high"] is not None else 0 for r in series],
    ]
    ax.errorbar(x, y, yerr=err, capsize=4, label=label, **{"marker": "o", **style})


def _fd_panel(ax, rows: list[dict], baselines: list[dict], metric: str, title: str) -> None:
    ax.set_title(title)
    series = _series(rows, metric)
    _errorbar(ax, series, "generated, all views", color="C0", linewidth=2)
    for b, name in BASELINE_NAMES.items():
        found = _series([r for r in baselines if r["baseline"] == b], metric)
        if found:
            dashes, marker = BASELINE_STYLES[b]
            _errorbar(ax, found, name, color="C0", linestyle=dashes, marker=marker, mfc="none")
    for r in series:
        ax.annotate(
            f"N={r['n_generated']}",
            (r["horizon"], r["value"]),
            textcoords="offset points",
            xytext=(6, -12),
            fontsize=7,
            color="0.35",
        )
    for i, view in enumerate(VIEWS):
        per_view = _series(rows, metric, view=view)
        if per_view:
            ax.plot(
                [r["horizon"] for r in per_view],
                [r["value"] for r in per_view],
                marker=".",
                linewidth=1,
                alpha=0.6,
                color=f"C{i + 2}",
                label=view,
            )
    if metric == "fid":
        inf = _series(rows, "fid_inf")
        if inf:
            ax.plot(
                [r["horizon"] for r in inf],
                [r["value"] for r in inf],
                "k--",
                marker="x",
                label="FID∞",
            )
    ax.set_ylabel("Fréchet distance (lower is better)")
    ax.legend(fontsize=8)


def _trajectory_panel(ax, rows: list[dict], horizons: list[int]) -> None:
    ax.set_title("Actions")
    drawn = False
    for (source, view), color in zip(ADHERENCE_VIEWS.items(), ("C1", "C5"), strict=True):
        adherence = _series(rows, "instruction_adherence", view=view, category="turn")
        if adherence:
            _errorbar(ax, adherence, f"instruction adherence ({source}, share)", color=color)
            drawn = True
    agreement = _series(rows, "action_video_agreement", view="front")
    if agreement:
        _errorbar(ax, agreement, "action–video agreement (r)", color="C4")
        drawn = True
    if not drawn:
        ax.text(
            0.5, 0.6, "not computed", ha="center", va="center", transform=ax.transAxes, color="0.4"
        )
    else:
        ax.legend(fontsize=8)
    ax.set_ylim(-1.05, 1.05)
    ax.axhline(0, color="0.6", linewidth=0.8)
    ax.set_ylabel("share / correlation (higher is better)")


def qa_json(config: QAConfig, result: QAResult) -> bytes:
    doc = {
        "format": "lmgendrive-qa",
        "format_version": 1,
        "output": config.output,
        "protocol": {
            "inception_dims": config.dims,
            "bootstrap_replicates": config.bootstrap,
            "recorded_codec": config.encoding
            if config.encoding == "png"
            else f"mp4 crf {config.crf}",
            "metrics": list(config.metrics),
            "baselines": list(BASELINE_NAMES) if config.baselines else [],
        },
        "extractors": result.extractors,
        "skipped": result.skipped,
        "rows": result.rows,
        "baselines": result.baselines,
        "details": {
            k: {str(h): v for h, v in d.items()} if isinstance(d, dict) else d
            for k, d in result.details.items()
        },
        "files": ["report.md", "horizon.png", "qa.json", *result.files],
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def write_outputs(config: QAConfig, result: QAResult, out: Storage) -> None:
    out.put_bytes("report.md", markdown(config, result).encode())
    out.put_bytes("horizon.png", horizon_png(result))
    out.put_bytes("qa.json", qa_json(config, result))
