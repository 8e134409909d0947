"""The interface of detectors that watch a dedicated probe run of each task.

Some hazards can only be seen with instrumentation that would distort the
timings (a state check on every greenlet switch, say), so after the measured
runs each task runs once more as ``concurrency`` copies with every probe on.
A probe is created once per audited process, gets ``begin`` before that run
and ``end`` after it, and returns findings. It must restore anything it
changes, and never print.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .._model import Finding


@dataclass
class ProbeRun:
    """One task's probe run, as the probes see it."""

    task_name: str
    task: Any  # the Celery task object
    app: Any
    roots: tuple[str, ...]  # folders of the app's own code (see _paths.is_audited_file)
    concurrency: int
    # the greenlets running the task copies, filled in as they are spawned
    greenlets: set[Any] = field(default_factory=set)
    # outcome of each solo run: wall_ms, cpu_ms, error, result (a JSON-able summary)
    solo_outcomes: list[dict[str, Any]] = field(default_factory=list)

    def is_task_greenlet(self, glet: Any) -> bool:
        return glet in self.greenlets


class Probe(Protocol):
    """What the runner knows of a probe."""

    kinds: tuple[str, ...]

    def begin(self, run: ProbeRun) -> None:
        """Called in the runner's greenlet just before the copies are spawned."""

    def end(self, run: ProbeRun, outcomes: list[dict[str, Any]]) -> list[Finding]:
        """Called after every copy finished; ``outcomes`` as for ``solo_outcomes``."""
        return []
