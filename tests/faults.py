"""Fault injection for the reliability tests: a generator stage that fails or dies where told.

``LMGD_FAULT_FAIL_UNIT=unit-000003``: that unit always raises :class:`InjectedFault`.
``LMGD_FAULT_KILL_UNIT=unit-000002`` with ``LMGD_FAULT_FLAG=/path``: the worker process exits
abruptly mid-unit (after generating, as it publishes the shard), once: the flag file records that it
happened. ``LMGD_FAULT_START_S=20`` with :class:`SlowStartUnitRunner`: each worker takes that
long more to start. The variables start with ``LMGD_``, so the executor hands them to Ray actors;
this module is pickled by value, so Ray's worker processes need not import ``tests/``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import ray.cloudpickle

from workers.generator import UnitRunner

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class InjectedFault(RuntimeError):
    """The failure ``LMGD_FAULT_FAIL_UNIT`` asks for."""


def _listed(variable: str) -> list[str]:
    return os.environ.get(variable, "").split(",")


class _KillOnPublish:
    """A store that kills its process when asked to publish the shard of a listed unit."""

    def __init__(self, storage):
        self._storage = storage

    def __getattr__(self, name: str):
        return getattr(self._storage, name)

    def put_file(self, key: str, path: Path) -> None:
        unit, flag = Path(key).stem, os.environ.get("LMGD_FAULT_FLAG")
        if unit in _listed("LMGD_FAULT_KILL_UNIT") and flag and not Path(flag).exists():
            Path(flag).write_text(unit)
            os._exit(17)
        self._storage.put_file(key, path)


class SlowStartUnitRunner(UnitRunner):
    """:class:`UnitRunner` that takes ``LMGD_FAULT_START_S`` seconds more to start."""

    def __init__(self, *args, **kwargs):
        time.sleep(float(os.environ["LMGD_FAULT_START_S"]))
        super().__init__(*args, **kwargs)


class FaultyUnitRunner(UnitRunner):
    """:class:`UnitRunner` with the faults the environment asks for."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.storage = _KillOnPublish(self.storage)

    def run(self, unit):
        if unit.name in _listed("LMGD_FAULT_FAIL_UNIT"):
            raise InjectedFault(f"{unit.name}: injected failure (LMGD_FAULT_FAIL_UNIT)")
        return super().run(unit)
