"""From loop stalls to findings on tasks, in the audit's own words.

Runs off the hot path (the canary's flush greenlet), never in a loop callback. One loop
iteration can run several greenlets, so a stall is first cut where a task started or
ended inside it (the task signals stamp the clock and the thread's CPU clock): two
120 ms calls of two tasks in one iteration are two 120 ms stalls, not one of 240 ms.
Each piece is blamed on the task whose function is on the thread's stack in its looks;
when no look saw it (native code that kept the GIL throughout), on the task whose start
or end bounds it; else on no task (``UNATTRIBUTED``). Each piece becomes findings through
``detectors._stalls``, so a canary finding reads exactly as the audit's.
"""

from __future__ import annotations

import itertools
import os
import types
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .._model import Finding
from .._paths import caller_is_own, relative
from ..detectors import _stalls
from ..detectors._bytecode import global_writes, task_function
from ..detectors._gcwatch import GcWatch
from ..detectors._hub import Evidence, Sample, Stall
from ..detectors._stacks import FrameInfo
from ._watch import LoopStall

UNATTRIBUTED = "(no task)"
# Task starts and ends remembered to attribute the stalls no look saw.
_KEEP_EDGES = 4096


@dataclass(frozen=True)
class Edge:
    """A task started (``began``) or ended at ``at``, with the thread's CPU clock then."""

    at: float
    cpu: float
    task: str
    began: bool


@dataclass(frozen=True)
class Digested:
    """One stall, blamed: the findings say what it was (empty: below the warning level)."""

    task: str
    duration_s: float
    findings: tuple[Finding, ...]
    own: bool  # geventcheck's own work (its flush, a scrape of its metrics)


@dataclass
class TaskCodes:
    """Which task each function belongs to, learnt the first time a task runs."""

    by_code: dict[tuple[str, str], str] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)

    def learn(self, task: Any) -> types.FunctionType | None:
        name = task.name
        if name in self.seen:
            return None
        self.seen.add(name)
        func: types.FunctionType | None = task_function(task)
        if func is not None:
            code = func.__code__
            self.by_code[(code.co_filename, code.co_name)] = name
        return func

    def task_on(self, stack: tuple[FrameInfo, ...]) -> str | None:
        """The innermost task function on the stack (innermost first)."""
        for frame in stack:
            name = self.by_code.get((frame.file, frame.function))
            if name is not None:
                return name
        return None


class Digester:
    """Turns the watch's stalls into ``Digested`` records for the tally and the metrics."""

    def __init__(self, app_roots: tuple[str, ...], *, threshold_s: float, warn_s: float,
                 gc: GcWatch | None = None) -> None:
        self.app_roots = app_roots
        self.threshold_s = threshold_s
        self.warn_s = warn_s
        self.codes = TaskCodes()
        self.gc = gc
        # (at, cpu, task, began) tuples: the per-task path builds no object of ours
        self.edges: deque[tuple[float, float, str, bool]] = deque(maxlen=_KEEP_EDGES)

    def split(self, stall: LoopStall) -> list[tuple[LoopStall, str | None]]:
        """The stall cut at the task starts and ends inside it, each piece with the task
        whose end closes it or whose start opens it."""
        end = stall.start + stall.duration_s
        cuts = [Edge(*e) for e in self.edges if stall.start < e[0] < end]
        if not cuts:
            return [(stall, None)]
        points = [(stall.start, stall.cpu_start, None),
                  *((e.at, e.cpu, e) for e in cuts),
                  (end, stall.cpu_start + stall.cpu_s, None)]
        pieces = []
        for (t0, cpu0, opened), (t1, cpu1, closed) in itertools.pairwise(points):
            owner = (closed.task if closed is not None and not closed.began else
                     opened.task if opened is not None and opened.began else None)
            looks = [look for look in stall.looks if t0 <= look.at < t1]
            resumed = t0 <= stall.resumed_at < t1 or (t1 == end and stall.resumed_at >= end)
            # a piece no look saw, the sampler waiting for the GIL most of it: native code
            # kept the GIL
            blind = not looks and stall.blind_share(t0, t1) >= 0.5
            pieces.append((LoopStall(t0, t1 - t0, max(0.0, cpu1 - cpu0), cpu0, looks,
                                     stall.resumed if resumed else (), stall.resumed_at,
                                     blind, stall.blind_spans, stall.queue_marks), owner))
        return pieces

    def _blame(self, stall: LoopStall, owner: str | None) -> str:
        for look in stall.looks:
            name = self.codes.task_on(look.stack)
            if name is not None:
                return name
        if stall.resumed:
            name = self.codes.task_on(stall.resumed)
            if name is not None:
                return name
        return owner or UNATTRIBUTED

    def digest(self, stall: LoopStall) -> list[Digested]:
        """One record per piece of the stall that is long enough to matter."""
        return [self._digest(piece, owner) for piece, owner in self.split(stall)
                if piece.duration_s >= self.warn_s]

    def _digest(self, stall: LoopStall, owner: str | None) -> Digested:
        # a module imported through a relative sys.path entry names its file relatively:
        # one file, one name, so that its findings fold into one
        samples = [Sample(look.syscall, _absolute(look.stack), libraries=look.libraries,
                          gil_wait=look.gil_wait) for look in stall.looks]
        peers = {look.syscall.fd: look.peer for look in stall.looks
                 if look.syscall.fd is not None and not look.gil_wait}
        end = stall.start + stall.duration_s
        collections = tuple(self.gc.within(stall.start, end)) if self.gc else ()
        measured = Stall(stall.duration_s, stall.cpu_s, "canary",
                         Evidence(samples, peers),
                         queued_s=stall.queued_between(stall.start, end),
                         collections=collections,
                         unseen=not samples and stall.blind,
                         resumed_stack=_absolute(stall.resumed))
        findings = _stalls.stall_findings([measured], threshold_s=self.threshold_s,
                                          warn_s=self.warn_s, app_roots=self.app_roots)
        stacks = [look.stack for look in stall.looks if look.stack]
        own = bool(stacks) and sum(map(_is_canary_work, stacks)) * 2 >= len(stacks)
        return Digested(self._blame(stall, owner), stall.duration_s,
                        tuple(f for f in findings if f.severity != "info"), own)


def _absolute(stack: tuple[FrameInfo, ...]) -> tuple[FrameInfo, ...]:
    return tuple(f if f.file.startswith(("/", "<")) else
                 FrameInfo(os.path.abspath(f.file), f.line, f.function) for f in stack)


_CANARY_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _is_canary_work(stack: tuple[FrameInfo, ...]) -> bool:
    """The canary's own flush, or a scrape of its metrics endpoint."""
    return caller_is_own(stack) or any(
        f.file.startswith(_CANARY_DIR) or f"{os.sep}prometheus_client{os.sep}" in f.file
        for f in stack)


def state_findings(func: types.FunctionType | None, roots: tuple[str, ...]) -> list[Finding]:
    """Module globals the task's code reads and writes around a call that may switch, found
    once per task in its bytecode: what a gevent worker's concurrent copies would share."""
    if func is None:
        return []
    try:
        writes = global_writes(func, roots)
    except Exception:  # unusual bytecode must not cost the canary
        return []
    found = []
    for write in writes:
        if write.pattern is None or write.read is None:
            continue
        site = write.site(write.write)
        between = f" (the call at line {write.call_line} may switch)" if write.call_line else ""
        found.append(Finding(
            "global-state", "warning",
            f"{'reads then writes' if write.pattern == 'read-then-write' else 'writes then reads'}"
            f" the module global {write.glob.label} with a call between them{between}: "
            "concurrent copies on one gevent worker share it and can lose or mix updates "
            "(seen in the code, not in a run)",
            file=relative(site.file), line=site.line, function=site.function,
            fix="keep per-task state in locals or the task's arguments; guard shared "
                "state with a gevent.lock.Semaphore, or route the task to prefork"))
    return found
