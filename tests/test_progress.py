"""Progress without a terminal: rate-limited lines with done / total, rate and ETA
(storage/progress.py)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from storage import progress as P

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(
    r"^(?P<desc>[\w ]+): (?P<n>\d+)(?:/(?P<total>\d+))? (?P<unit>\w+)"
    r"(?: \((?P<pct>\d+)%\))? \| "
    r"(?P<rate>[\d.e+]+|\?) \w+/s \| (?:ETA (?P<eta>[\d:?]+) \| )?"
    r"(?:elapsed|finished in|stopped after) (?P<elapsed>\d+:\d\d:\d\d)(?: \| .*)?$"
)


class FakeClock:
    """Seconds that move when told (``tick``) or, with ``step``, by ``step`` on every reading."""

    def __init__(self, step: float = 0.0):
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


def _seconds(hms: str) -> int:
    h, m, s = (int(x) for x in hms.split(":"))
    return 3600 * h + 60 * m + s


def _lines(text: str) -> list[re.Match]:
    return [m for m in map(LINE.match, text.splitlines()) if m]


def test_lines_are_rate_limited_and_carry_done_total_rate_and_eta(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(P, "clock", clock)
    monkeypatch.setenv(P.INTERVAL_ENV, "10")
    out = io.StringIO()  # not a terminal
    with P.progress(100, "render", "frame", stream=out) as bar:
        assert isinstance(bar, P.LineProgress)
        for _ in range(50):  # 2 frames/s for 25 s: lines at 10 s and 20 s only
            clock.tick(0.5)
            bar.update()
        bar.set_postfix(units="3/7")
    assert out.getvalue().splitlines() == [
        "render: 20/100 frame (20%) | 2 frame/s | ETA 0:00:40 | elapsed 0:00:10",
        "render: 40/100 frame (40%) | 2 frame/s | ETA 0:00:30 | elapsed 0:00:20",
        "render: 50/100 frame (50%) | 2 frame/s | stopped after 0:00:25 | units=3/7",
    ]


def test_unknown_total_resumed_count_and_the_final_line(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(P, "clock", clock)
    out = io.StringIO()
    with P.LineProgress(None, "manifest", "drive", stream=out, interval=0) as bar:
        clock.tick(4)
        bar.update(2)
    with P.LineProgress(10, "stage 1", "it", initial=6, stream=out, interval=60) as bar:
        for _ in range(4):  # the rate counts this run's iterations only
            clock.tick(2)
            bar.update()
    with P.LineProgress(None, "idle", stream=out, interval=0):
        pass  # nothing to do, nothing said
    assert out.getvalue().splitlines() == [
        "manifest: 2 drive | 0.5 drive/s | elapsed 0:00:04",
        "manifest: 2 drive | 0.5 drive/s | finished in 0:00:04",
        "stage 1: 10/10 it (100%) | 0.5 it/s | finished in 0:00:08",
    ]


def test_a_terminal_gets_a_tqdm_bar_and_disabled_progress_says_nothing(monkeypatch):
    from tqdm import tqdm

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    with P.progress(3, "x", stream=Terminal()) as bar:
        assert isinstance(bar, tqdm) and not bar.disable
    quiet = io.StringIO()
    with P.progress(3, "x", stream=quiet, enabled=False) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""


@pytest.mark.parametrize(
    "value, expected", [("", 30.0), ("0", 0.0), ("2.5", 2.5), ("soon", 30.0), ("-1", 30.0)]
)
def test_the_interval_comes_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv(P.INTERVAL_ENV, value)
    assert P.interval_s() == expected


def test_generate_without_a_terminal_logs_progress_lines(tmp_path, monkeypatch, capsys):
    """``lmgd generate`` in-process, stderr captured (not a TTY): a clock that moves 1 s per reading
    and a 2 s interval; every line has done / total, rate and ETA, and lines are >= 2 s apart."""
    from pipeline_helpers import tiny_job, write_job

    from pipeline.cli import main

    monkeypatch.setattr(P, "clock", FakeClock(step=1.0))
    monkeypatch.setenv(P.INTERVAL_ENV, "2")
    spec = write_job(tmp_path / "job.yaml", tiny_job(str(tmp_path / "out")))
    assert main(["generate", str(spec), "--executor", "local"]) == 0
    err = capsys.readouterr().err
    generate = [m for m in _lines(err) if m["desc"] == "generate"]
    assert generate, err
    *running, last = generate
    assert running, err  # the run took more than one interval of the fake clock
    for m in running:
        assert m["total"] and m["eta"] and m["rate"] != "?" and m["unit"] == "sample", m[0]
        assert int(m["n"]) < int(m["total"])  # the line at 100 % is the last one
    assert "finished in" in last[0] and last["n"] == last["total"] and "units=" in last[0]
    seconds = [_seconds(m["elapsed"]) for m in running]
    gaps = [b - a for a, b in zip(seconds, seconds[1:], strict=False)]
    assert all(g >= 2 for g in gaps), gaps
    assert _seconds(running[0]["elapsed"]) >= 2
    assert [m["desc"] for m in _lines(err)].count("manifest") >= 1  # the seed scenes' drives
