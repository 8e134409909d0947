"""The hub monitor: measures every stretch in which a greenlet kept the hub from running.

A greenlet trace function stamps each switch with the wall clock and the
thread's CPU clock, so every stall is measured exactly, however short. A native
thread (the unpatched originals, as gevent's own monitor does) looks at the
stalled thread while the stall is still happening: its syscall, the socket peer
and the Python stack. It also notices a hub blocked for good (a deadlock) and
says so while the process can still talk.
"""

from __future__ import annotations

import sys
import time
import traceback
import types
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import greenlet
from gevent import get_hub
from gevent.monkey import get_original

from . import _native

_sleep = get_original("time", "sleep")
_start_thread = get_original("_thread", "start_new_thread")
_get_ident = get_original("_thread", "get_ident")
_get_native_id = get_original("_thread", "get_native_id")

# How many looks at the stalled thread one stall keeps, and how deep a stack.
_MAX_SAMPLES = 200
_MAX_DEPTH = 40


@dataclass(frozen=True)
class FrameInfo:
    file: str
    line: int
    function: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} in {self.function}"


@dataclass(frozen=True)
class Sample:
    """One look at the stalled thread: its syscall and its stack (innermost first)."""

    syscall: _native.SyscallSample
    stack: tuple[FrameInfo, ...]


@dataclass(frozen=True)
class Focus:
    """Where a stall spent most of its samples, and what the thread did there."""

    stack: tuple[FrameInfo, ...]
    syscall: str | None
    endpoint: str | None
    callee: str | None


def _mode(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return Counter(present).most_common(1)[0][0] if present else None


@dataclass
class Evidence:
    """What the monitor thread saw while one stall was going on."""

    samples: list[Sample] = field(default_factory=list)
    # the callable named at each innermost (file, line) seen
    callees: dict[tuple[str, int], str | None] = field(default_factory=dict)
    # socket peer of each descriptor seen in a syscall
    peers: dict[int, str | None] = field(default_factory=dict)

    @property
    def syscall(self) -> str | None:
        """What the thread mostly did: ``running``, or the syscall it sat in."""
        name: str | None = _mode(
            [s.syscall.name for s in self.samples if s.syscall.name != "unknown"])
        return name

    @property
    def stack(self) -> tuple[FrameInfo, ...]:
        """The latest stack seen: where the thread is now."""
        stacks = [s.stack for s in self.samples if s.stack]
        return stacks[-1] if stacks else ()

    def focus(self, place: Callable[[tuple[FrameInfo, ...]], object]) -> Focus:
        """Blame the place (as ``place`` names it) where most samples were taken."""
        groups: dict[object, list[Sample]] = {}
        for sample in self.samples:
            if sample.stack:
                groups.setdefault(place(sample.stack), []).append(sample)
        if not groups:
            return Focus((), self.syscall, None, None)
        group = max(groups.values(), key=len)
        stack = group[0].stack
        names = [s.syscall.name for s in group if s.syscall.name != "unknown"]
        fds = [s.syscall.fd for s in group]
        return Focus(
            stack, _mode(names), _mode([self.peers.get(fd) for fd in fds if fd is not None]),
            self.callees.get((stack[0].file, stack[0].line)),
        )


@dataclass(frozen=True)
class Stall:
    """One stretch in which a greenlet other than the hub ran without switching."""

    duration_s: float
    cpu_s: float
    phase: str
    evidence: Evidence

    @property
    def cpu_ratio(self) -> float:
        return self.cpu_s / self.duration_s if self.duration_s > 0 else 0.0


def frames_of(frame: types.FrameType | None, limit: int = _MAX_DEPTH) -> tuple[FrameInfo, ...]:
    """Innermost first."""
    out: list[FrameInfo] = []
    while frame is not None and len(out) < limit:
        out.append(FrameInfo(frame.f_code.co_filename, frame.f_lineno or 0, frame.f_code.co_name))
        frame = frame.f_back
    return tuple(out)


class HubMonitor:
    """Install with ``start()`` in the thread that runs the hub; ``stop()`` undoes it."""

    def __init__(
        self,
        warn_s: float,
        *,
        tick_s: float = 0.001,
        deadlock_s: float | None = None,
        on_deadlock: Callable[[float, Evidence], None] | None = None,
        on_heartbeat: Callable[[], None] | None = None,
        heartbeat_s: float = 1.0,
    ) -> None:
        self.warn_s = warn_s
        self.tick_s = tick_s
        self.deadlock_s = deadlock_s
        self.on_deadlock = on_deadlock
        self.on_heartbeat = on_heartbeat
        self.heartbeat_s = heartbeat_s
        self.phase = "idle"
        self.stalls: list[Stall] = []
        self._hub = get_hub()
        self._ident = _get_ident()
        self._reader = _native.SyscallReader(_get_native_id())
        self._switches = 0
        self._since = time.perf_counter()
        self._cpu_since = time.thread_time()
        self._running: Any = None
        self._evidence: dict[int, Evidence] = {}
        self._ignored: set[Any] = set()
        self._stopped = False
        self._previous_trace: Any = None
        self._deadlock_reported = -1

    # -- the trace function: runs on every switch, keep it lean ------------------
    def _trace(self, event: str, args: tuple[Any, Any]) -> None:
        if event in ("switch", "throw"):
            origin, target = args
            now = time.perf_counter()
            cpu = time.thread_time()
            elapsed = now - self._since
            if elapsed >= self.warn_s and origin is not self._hub and origin not in self._ignored:
                evidence = self._evidence.pop(self._switches, None) or Evidence()
                self.stalls.append(Stall(elapsed, cpu - self._cpu_since, self.phase, evidence))
            elif self._evidence:
                self._evidence.pop(self._switches, None)
            self._switches += 1
            self._running = target
            self._since = now
            self._cpu_since = cpu
        if self._previous_trace is not None:
            self._previous_trace(event, args)

    # -- the native thread -----------------------------------------------------
    def _watch(self) -> None:
        sample_after = min(self.warn_s / 2, 0.004)
        next_beat = time.perf_counter() + self.heartbeat_s
        while not self._stopped:
            _sleep(self.tick_s)
            now = time.perf_counter()
            if self.on_heartbeat is not None and now >= next_beat:
                next_beat = now + self.heartbeat_s
                self.on_heartbeat()
            switches, since, running = self._switches, self._since, self._running
            if running is None or running is self._hub or running in self._ignored:
                continue
            age = now - since
            if age < sample_after:
                continue
            evidence = self._evidence.get(switches)
            if evidence is None:
                evidence = self._evidence[switches] = Evidence()
            self._sample(evidence, switches)
            if (
                self.deadlock_s is not None
                and age >= self.deadlock_s
                and self._deadlock_reported != switches
                and self.on_deadlock is not None
            ):
                self._deadlock_reported = switches
                self.on_deadlock(age, evidence)

    def _sample(self, evidence: Evidence, switches: int) -> None:
        if len(evidence.samples) >= _MAX_SAMPLES:
            return
        syscall = self._reader.read()
        frame = sys._current_frames().get(self._ident)
        if frame is None or self._switches != switches:
            return
        stack = frames_of(frame)
        evidence.samples.append(Sample(syscall, stack))
        if syscall.fd is not None and syscall.fd not in evidence.peers:
            evidence.peers[syscall.fd] = _native.peer_of_fd(syscall.fd)
        key = (stack[0].file, stack[0].line)
        if key not in evidence.callees:
            evidence.callees[key] = _native.describe_callee(frame)

    # -- control ---------------------------------------------------------------
    def ignore(self, glet: Any) -> None:
        """Stalls of this greenlet (the runner's own) are not the task's."""
        self._ignored.add(glet)

    def start(self) -> None:
        self._previous_trace = greenlet.settrace(self._trace)
        self._running = greenlet.getcurrent()
        self._since = time.perf_counter()
        self._cpu_since = time.thread_time()
        _start_thread(self._watch, ())

    def stop(self) -> None:
        self._stopped = True
        greenlet.settrace(self._previous_trace)

    def take_stalls(self) -> list[Stall]:
        stalls, self.stalls = self.stalls, []
        return stalls


def all_stacks() -> list[str]:
    """Every OS thread's and every live greenlet's stack, for a deadlock report."""
    import gc

    lines: list[str] = []
    for ident, frame in sys._current_frames().items():
        lines.append(f"thread {ident}:")
        lines.extend("  " + line.rstrip() for line in traceback.format_stack(frame))
    for obj in gc.get_objects():
        if isinstance(obj, greenlet.greenlet) and obj.gr_frame is not None:
            lines.append(f"greenlet {obj!r}:")
            lines.extend("  " + line.rstrip() for line in traceback.format_stack(obj.gr_frame))
    return lines
