"""Progress of long loops: a tqdm bar on a terminal, else a plain line at most every 30 s.

Without a terminal (a batch job's log file, CI) a tqdm bar is either silent or a stream of carriage
returns. :func:`progress` then writes lines such as::

    generate: 12/40 sample (30%) | 0.45 sample/s | ETA 0:01:02 | elapsed 0:00:27 | units=6/20

to stderr, at most one every ``LMGD_PROGRESS_INTERVAL`` seconds (default 30; 0: every update), and
one last line when the loop ends. The lines are printed, not logged, so that they show at the
default log level.

It lives in ``storage/``, the lowest room that every room with a long loop may import
(``lmgendrive.train``, ``qa``, ``workers``, ``pipeline``); ``schemas/`` holds contracts only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from typing import Any, TextIO

log = logging.getLogger(__name__)

INTERVAL_ENV = "LMGD_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0

clock = time.monotonic  # replaced by tests


def interval_s() -> float:
    """Seconds between two progress lines: ``$LMGD_PROGRESS_INTERVAL``, else 30."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        log.warning(
            "%s=%r is not a number of seconds >= 0; using %g", INTERVAL_ENV, text, DEFAULT_INTERVAL
        )
        return DEFAULT_INTERVAL
    return value


def progress(
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    *,
    initial: int = 0,
    enabled: bool = True,
    stream: TextIO | None = None,
):
    """A context manager with tqdm's ``update(n)``, ``set_postfix(**kw)``, ``total`` and
    ``refresh()``: a tqdm bar when ``stream`` (default stderr) is a terminal, else a
    :class:`LineProgress`; nothing is shown when ``enabled`` is false."""
    from tqdm import tqdm

    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=True)
    if _is_terminal(stream):
        return tqdm(
            total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True, file=stream
        )
    return LineProgress(total, desc, unit, initial=initial, stream=stream)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


class LineProgress:
    """Rate-limited progress lines (done / total, rate, ETA) for streams that are not terminals."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        *,
        initial: int = 0,
        stream: TextIO | None = None,
        interval: float | None = None,
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.initial = initial
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval_s() if interval is None else interval
        self.postfix: dict[str, Any] = {}
        self.start = self.last_line = clock()
        self.closed = False

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total and self.n >= self.total:
            return  # all done: the last line comes from close()
        now = clock()
        if now - self.last_line >= self.interval:
            self.last_line = now
            self._write(self.line(now))

    def set_postfix(
        self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any
    ) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def refresh(self) -> None:
        """Nothing to redraw: lines are written by :meth:`update` and :meth:`close`."""

    def close(self) -> None:
        """Write the last line, unless nothing was ever to be done."""
        if self.closed:
            return
        self.closed = True
        if self.n > self.initial or self.total:
            self._write(self.line(clock(), final=True))

    def line(self, now: float, final: bool = False) -> str:
        elapsed = max(now - self.start, 0.0)
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        done_of = (
            f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)"
            if self.total
            else f"{self.n} {self.unit}"
        )
        parts = [f"{self.desc}: {done_of}", f"{_rate(rate)} {self.unit}/s"]
        if final:
            finished = self.total is None or self.n >= self.total
            parts.append(f"{'finished in' if finished else 'stopped after'} {_duration(elapsed)}")
        else:
            if self.total:
                left = max(self.total - self.n, 0)
                parts.append(f"ETA {_duration(left / rate) if rate else '?'}")
            parts.append(f"elapsed {_duration(elapsed)}")
        if self.postfix:
            parts.append(", ".join(f"{k}={v}" for k, v in self.postfix.items()))
        return " | ".join(parts)

    def _write(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # a broken log stream must not stop the work
            print(text, file=self.stream, flush=True)


def _rate(rate: float | None) -> str:
    if rate is None:
        return "?"
    return f"{rate:.3g}" if rate < 100 else f"{rate:.0f}"


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
