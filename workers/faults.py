"""Fault injection for the reliability tests, driven by environment variables.

``LMGD_FAULT_KILL_UNIT=unit-000002`` with ``LMGD_FAULT_FLAG=/path``: the worker process running
that unit exits abruptly mid-unit (after generating, before publishing), once: the flag file
records that it happened. ``LMGD_FAULT_FAIL_UNIT=unit-000003``: that unit always raises.
"""

from __future__ import annotations

import os
from pathlib import Path


class InjectedFault(RuntimeError):
    """The failure ``LMGD_FAULT_FAIL_UNIT`` asks for."""


def maybe_fail(unit: str) -> None:
    if unit in os.environ.get("LMGD_FAULT_FAIL_UNIT", "").split(","):
        raise InjectedFault(f"{unit}: injected failure (LMGD_FAULT_FAIL_UNIT)")


def maybe_kill(unit: str) -> None:
    flag = os.environ.get("LMGD_FAULT_FLAG")
    if unit in os.environ.get("LMGD_FAULT_KILL_UNIT", "").split(",") and flag and not Path(flag).exists():
        Path(flag).write_text(unit)
        os._exit(17)
