"""Garbage collections, timed, so that a collection is never blamed on the task it hit.

A collection runs inside whatever code allocated last: in the audit that is
often a task, collecting garbage the audit itself left (FIELD-NOTES §7 saw a
140 ms stall in ``celery/result.py __del__``). ``gc.callbacks`` reports the
start and end of every collection; the judge subtracts them from stalls.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Any

_KEEP = 4096
# Shorter collections cannot matter to a stall judged in milliseconds; a busy task makes
# thousands of them, which would push the long ones out of the record.
_MIN_S = 0.0005


@dataclass(frozen=True)
class Collection:
    start: float  # perf_counter
    end: float
    generation: int
    collected: int

    def overlap(self, start: float, end: float) -> float:
        return max(0.0, min(end, self.end) - max(start, self.start))


class GcWatch:
    """Times every collection while installed; ``within()`` gives those in a window."""

    def __init__(self) -> None:
        self._started: float | None = None
        self._done: list[Collection] = []

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._started = now
        elif self._started is not None and now - self._started >= _MIN_S:
            self._done.append(Collection(self._started, now, int(info.get("generation", 0)),
                                         int(info.get("collected", 0))))
            if len(self._done) > 2 * _KEEP:
                del self._done[:-_KEEP]
        if phase != "start":
            self._started = None

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def within(self, start: float, end: float) -> list[Collection]:
        return [c for c in self._done if c.overlap(start, end) > 0]

    @staticmethod
    def settle() -> None:
        """Collect the audit's own garbage and freeze what is left, as production workers
        do after start-up: between measured runs, never inside one."""
        gc.collect()
        gc.freeze()
