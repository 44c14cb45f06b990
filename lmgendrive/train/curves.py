"""Loss curves: the JSONL training log drawn as a PNG (total loss and its terms, log scale)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SKIP = {"stage", "step", "lr", "grad_norm", "seconds"}


def read_log(path: Path) -> list[dict]:
    """Rows of a JSONL log (empty when the file does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (same length; the first points average what exists)."""
    c = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_log(log_path: Path, png: Path, title: str) -> Path | None:
    """Draw ``log_path`` to ``png``: left the total loss (raw and smoothed), right each term
    (smoothed) and the learning rate; returns ``png`` (``None`` for an empty log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log_path)
    if not rows:
        return None
    steps = np.array([r["step"] for r in rows])
    window = max(1, len(rows) // 50)
    fig, (ax_loss, ax_terms) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    loss = np.array([r["loss"] for r in rows])
    ax_loss.plot(steps, loss, color="tab:blue", alpha=0.3, lw=0.8, label="loss")
    ax_loss.plot(steps, smooth(loss, window), color="tab:blue", lw=1.8, label=f"mean of {window}")
    terms = sorted({k for r in rows for k in r} - SKIP - {"loss"})
    for name in terms:
        values = np.array([r.get(name, np.nan) for r in rows], dtype=float)
        ax_terms.plot(steps, smooth(np.nan_to_num(values, nan=0.0), window), lw=1.4, label=name)
    lr_ax = ax_loss.twinx()
    lr_ax.plot(steps, [r["lr"] for r in rows], color="tab:gray", ls="--", lw=1.0)
    lr_ax.set_ylabel("learning rate (dashed)", color="tab:gray")
    for ax, name in ((ax_loss, "total loss"), (ax_terms, "loss terms")):
        ax.set_xlabel("iteration")
        ax.set_title(f"{title}: {name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        if all(v > 0 for line in ax.get_lines() for v in line.get_ydata()):
            ax.set_yscale("log")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    return png
