"""What outlives a ``lmgd generate`` driver killed with SIGKILL on its own Ray cluster.

Starts the tiny job on a local Ray cluster in a child process, kills the driver (SIGKILL, no
cleanup) once the first unit is done, then watches the Ray processes the run started until none is
left. Prints a JSON line with the count while running, which were still there 5 s after the kill,
and the seconds until the last one exited.

    python bench/driver_death.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from pipeline_helpers import tiny_job, write_job  # noqa: E402

RAY_MARKERS = ("raylet", "gcs_server", "ray::", "/ray/", "default_worker")


def ray_processes() -> dict[int, str]:
    """pid -> the first words of the command line, of every Ray process on this machine."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if "ray" in cmd and any(m in cmd for m in RAY_MARKERS):
            found[int(entry.name)] = cmd.split()[0]
    return found


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        job = write_job(Path(tmp) / "job.yaml", tiny_job(str(out), horizons=[8, 16, 24, 32]))
        before = set(ray_processes())
        lmgd = Path(sys.executable).with_name("lmgd")
        driver = subprocess.Popen(
            [str(lmgd), "generate", str(job)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 180
        while not (out / "_done").is_dir() and time.monotonic() < deadline:
            time.sleep(0.2)
        started = {k: v for k, v in ray_processes().items() if k not in before}
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        killed = time.monotonic()
        time.sleep(5)
        after_5s = sorted(v for k, v in ray_processes().items() if k in started)
        while any(k in started for k in ray_processes()) and time.monotonic() - killed < 300:
            time.sleep(0.5)
        print(
            json.dumps(
                {
                    "bench": "driver_death",
                    "ray_processes_while_running": len(started),
                    "still_there_5s_after_kill": after_5s,
                    "last_gone_after_s": round(time.monotonic() - killed, 1),
                }
            )
        )


if __name__ == "__main__":
    main()
