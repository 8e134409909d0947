"""The hub monitor: measures every stretch in which a greenlet kept the hub from running.

A lean greenlet trace function times every run of a greenlet exactly; a native
thread (the unpatched originals, as gevent's own monitor uses) watches the
switches. While a run without a switch is going on, it looks at the
stalled thread: its syscall, the socket peer, the Python stack, the call on the
app's line, and whether the thread runs native code without the GIL. It also
notices a hub blocked for good (a deadlock) and says so while the process can
still talk.
"""

from __future__ import annotations

import sys
import time
import traceback
import types
from collections import Counter
from collections.abc import Callable, Iterable
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
_STACK_EVERY = 4
# How long the watcher spins, holding the GIL, to see whether the stalled thread still runs.
_GIL_PROBE_S = 0.0002


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
    # ran on a CPU while the watcher held the GIL (native code); None when not probed
    gil_free: bool | None = None


@dataclass(frozen=True)
class Focus:
    """Where a stall spent most of its samples, and what the thread did there."""

    stack: tuple[FrameInfo, ...]
    syscall: str | None
    endpoint: str | None
    callee: str | None
    gil_free: bool


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

    def focus(self, place: Callable[[tuple[FrameInfo, ...]], FrameInfo | None]) -> Focus:
        """Blame the place (the frame ``place`` picks) where most samples were taken."""
        groups: dict[FrameInfo | None, list[Sample]] = {}
        for sample in self.samples:
            if sample.stack:
                groups.setdefault(place(sample.stack), []).append(sample)
        if not groups:
            return Focus((), self.syscall, None, None, False)
        where, group = max(groups.items(), key=lambda item: len(item[1]))
        names = [s.syscall.name for s in group if s.syscall.name != "unknown"]
        fds = [s.syscall.fd for s in group]
        probes = [s.gil_free for s in self.samples if s.gil_free is not None]
        return Focus(
            group[0].stack, _mode(names),
            _mode([self.peers.get(fd) for fd in fds if fd is not None]),
            self.callees.get((where.file, where.line)) if where else None,
            bool(probes) and sum(probes) * 2 > len(probes),
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
        # f_lineno is None in a few interpreter states; the function's first line is honest
        line = frame.f_lineno or frame.f_code.co_firstlineno
        out.append(FrameInfo(frame.f_code.co_filename, line, frame.f_code.co_name))
        frame = frame.f_back
    return tuple(out)


@dataclass
class _Look:
    """What the watcher saw of one run of a greenlet (one switch count) at its looks."""

    phase: str
    first_t: float
    first_cpu: float
    last_t: float
    last_cpu: float
    evidence: Evidence = field(default_factory=Evidence)

    @property
    def cpu_share(self) -> float | None:
        window = self.last_t - self.first_t
        return min(1.0, (self.last_cpu - self.first_cpu) / window) if window > 0 else None


# How many finished runs the watcher remembers for the trace to match its stalls to.
_KEEP_LOOKS = 256


class HubMonitor:
    """Start it in the thread that runs the hub; ``stop()`` undoes it.

    A lean greenlet trace function stamps each switch with ``perf_counter`` and
    notes every run of a greenlet that lasted ``warn_s`` or more, so a stall's
    duration is exact. Everything else is done by a native watcher thread: it
    looks every ``idle_tick_s`` while switches keep coming, and every ``tick_s``
    once one greenlet has run through two looks, reading the thread's CPU clock,
    its syscall, the stack and the call on the app's line. Each look costs the
    audited thread a GIL hand-over, hence the two rates. ``start()`` lowers the
    interpreter's switch interval to ``tick_s`` so a thread looping in Python
    hands the GIL to the watcher in time; ``stop()`` restores it.
    """

    def __init__(
        self,
        warn_s: float,
        *,
        tick_s: float = 0.001,
        idle_tick_s: float = 0.004,
        deadlock_s: float | None = None,
        on_deadlock: Callable[[float, Evidence], None] | None = None,
        on_heartbeat: Callable[[], None] | None = None,
        heartbeat_s: float = 1.0,
        is_app_file: Callable[[str], bool] = lambda path: True,
    ) -> None:
        self.warn_s = warn_s
        self.tick_s = tick_s
        self.idle_tick_s = max(idle_tick_s, tick_s)
        self.deadlock_s = deadlock_s
        self.on_deadlock = on_deadlock
        self.on_heartbeat = on_heartbeat
        self.heartbeat_s = heartbeat_s
        self.is_app_file = is_app_file
        self.phase = "idle"
        self._hub = get_hub()
        self._ident = _get_ident()
        self._cpu_clock = time.pthread_getcpuclockid(self._ident)
        self._reader = _native.SyscallReader(_get_native_id())
        # written by the trace function only: [switch count, time of last switch, running]
        self._state: list[Any] = [0, time.perf_counter(), None]
        # runs that lasted warn_s or more: (switch count, start, end, greenlet)
        self._long_runs: list[tuple[int, float, float, Any]] = []
        self._looks: dict[int, _Look] = {}
        self._watching: tuple[int, _Look] | None = None
        self._ignored: set[Any] = set()
        self._describable: set[str] = set()
        self._previous_trace: Any = None
        self._stopped = False
        self._switch_interval: float | None = None

    def _make_trace(self) -> Callable[[str, tuple[Any, Any]], None]:
        state, long_runs, warn, clock = self._state, self._long_runs, self.warn_s, time.perf_counter

        def trace(event: str, args: tuple[Any, Any]) -> None:
            now = clock()
            if now - state[1] >= warn:
                long_runs.append((state[0], state[1], now, args[0]))
            state[0] += 1
            state[1] = now
            state[2] = args[1]

        return trace

    # -- the native thread -----------------------------------------------------
    def _watch(self) -> None:
        state, cpu_of, clock = self._state, time.clock_gettime, self._cpu_clock
        sample_after = min(self.warn_s / 2, 0.004)
        next_beat = time.perf_counter() + self.heartbeat_s
        try:
            while not self._stopped:
                watching = self._watching
                confirmed = watching is not None and watching[1].last_t > watching[1].first_t
                _sleep(self.tick_s if confirmed else self.idle_tick_s)
                now, cpu = time.perf_counter(), cpu_of(clock)
                count, since, active = state
                if self.on_heartbeat is not None and now >= next_beat:
                    next_beat = now + self.heartbeat_s
                    self.on_heartbeat()
                if watching is not None and watching[0] != count:
                    self._remember(*watching)
                    watching = None
                if active is None or active is self._hub or active in self._ignored:
                    self._watching = None
                    continue
                if watching is None:
                    self._watching = (count, _Look(self.phase, now, cpu, now, cpu))
                    continue
                look = watching[1]
                look.last_t, look.last_cpu = now, cpu
                age = now - since
                if age >= sample_after:
                    self._sample(look.evidence, count)
                if self.deadlock_s is not None and age >= self.deadlock_s:
                    if self.on_deadlock is not None:
                        self.on_deadlock(age, look.evidence)
                    self.on_deadlock = None  # once: the parent ends this process
        finally:
            self._reader.close()

    def _remember(self, count: int, look: _Look) -> None:
        self._looks[count] = look
        while len(self._looks) > _KEEP_LOOKS:
            del self._looks[next(iter(self._looks))]

    def _sample(self, evidence: Evidence, count: int) -> None:
        if len(evidence.samples) >= _MAX_SAMPLES:
            return
        syscall = self._reader.read()
        gil_free = self._runs_without_gil() if len(evidence.samples) < 2 else None
        if len(evidence.samples) % _STACK_EVERY:
            # Walking another thread's frames is the riskiest thing this thread does (a
            # rare crash was seen on 3.11): take a stack at every few looks only, which
            # keeps the looks with stacks spread evenly over the stall.
            if self._state[0] == count:
                evidence.samples.append(Sample(syscall, (), gil_free))
            return
        frame = sys._current_frames().get(self._ident)
        if frame is None or self._state[0] != count:
            return
        stack = frames_of(frame)
        evidence.samples.append(Sample(syscall, stack, gil_free))
        if syscall.fd is not None and syscall.fd not in evidence.peers:
            evidence.peers[syscall.fd] = _native.peer_of_fd(syscall.fd)
        app_frame = self._app_frame(frame)
        if app_frame is not None:
            key = (app_frame.f_code.co_filename,
                   app_frame.f_lineno or app_frame.f_code.co_firstlineno)
            if key not in evidence.callees and key[0] in self._describable:
                evidence.callees[key] = _native.describe_callee(app_frame)

    def _runs_without_gil(self) -> bool:
        """Does the stalled thread burn CPU while this thread holds the GIL? Then it is
        inside native code that let go of the GIL; a Python loop would be waiting for it."""
        before = time.clock_gettime(self._cpu_clock)
        deadline = time.perf_counter() + _GIL_PROBE_S
        while time.perf_counter() < deadline:
            pass
        return time.clock_gettime(self._cpu_clock) - before > _GIL_PROBE_S / 4

    def _app_frame(self, frame: types.FrameType | None) -> types.FrameType | None:
        while frame is not None:
            if self.is_app_file(frame.f_code.co_filename) and not frame.f_code.co_name.startswith(
                "<"
            ):
                return frame
            frame = frame.f_back
        return None

    # -- control ---------------------------------------------------------------
    def ignore(self, glet: Any) -> None:
        """Stalls of this greenlet (the runner's own) are not the task's."""
        self._ignored.add(glet)

    def prime(self, files: Iterable[str]) -> None:
        """Parse these source files now, outside any measured run, so that naming a
        call later does not hold the GIL for a whole parse (that would make stalls)."""
        import executing

        for path in files:
            if path in self._describable or not path.endswith(".py"):
                continue
            try:
                executing.Source.for_filename(path)
            except (OSError, SyntaxError, UnicodeDecodeError):
                continue
            self._describable.add(path)

    def start(self) -> None:
        import executing  # noqa: F401  (imported now, not while a stall is measured)

        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, self.tick_s))
        self._state[1] = time.perf_counter()
        self._state[2] = greenlet.getcurrent()
        self._previous_trace = greenlet.settrace(self._make_trace())
        _start_thread(self._watch, ())

    def stop(self) -> None:
        self._stopped = True
        greenlet.settrace(self._previous_trace)
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)

    def take_stalls(self) -> list[Stall]:
        """The stalls since the last call, each with what the watcher saw of it."""
        watching = self._watching
        if watching is not None:
            self._remember(*watching)
        runs, self._long_runs[:] = list(self._long_runs), []
        stalls = []
        for count, start, end, glet in runs:
            if glet is self._hub or glet in self._ignored:
                continue
            look = self._looks.pop(count, None)
            if look is None:  # too short for the watcher to look twice: judge the samples
                look = _Look(self.phase, start, 0.0, start, 0.0)
            share = look.cpu_share
            if share is None:
                share = 1.0 if look.evidence.syscall == "running" else 0.0
            duration = end - start
            stalls.append(Stall(duration, share * duration, look.phase, look.evidence))
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
