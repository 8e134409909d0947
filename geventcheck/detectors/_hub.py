"""The hub monitor: measures every stretch in which a greenlet kept the hub from running.

A lean greenlet trace function times every run of a greenlet exactly and, for
the rare long one, reads the thread's CPU clock at its end. A native watcher
thread (the unpatched originals, as gevent's own monitor uses) reads the CPU
clock and the run-queue wait at every look, which brackets a run's CPU time
even when the watcher could not look during it (native code that keeps the
GIL). While a run is under way it looks at the stalled thread: its syscall,
the socket peer, the native libraries on its stack and, through faulthandler,
its Python stack; after a stretch in which it could not get the GIL, it reads
the stack the moment it gets it back. The watcher never holds a frame object of
the audited thread and never runs the app's code; an exception inside it is
reported once and the watch goes on.
"""

from __future__ import annotations

import bisect
import itertools
import math
import os
import sys
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import greenlet
from gevent import get_hub
from gevent.monkey import get_original

from . import _native
from ._gcwatch import Collection, GcWatch
from ._stacks import FrameInfo, StackReader

__all__ = ["Evidence", "FrameInfo", "HubMonitor", "Sample", "Stall", "all_stacks",
           "gil_futex_words"]

_sleep = get_original("time", "sleep")
_start_thread = get_original("_thread", "start_new_thread")
_get_ident = get_original("_thread", "get_ident")
_get_native_id = get_original("_thread", "get_native_id")

# How many looks at the stalled thread one stall keeps, and how often one takes a stack.
_MAX_SAMPLES = 200
_STACK_EVERY = 4
# How long the watcher spins, holding the GIL, to see whether the stalled thread still runs.
_GIL_PROBE_S = 0.0002
# Runs the watcher looked at, kept for the trace to match its long runs to (sampled ones only).
_KEEP_LOOKS = 4096
# Clock readings kept to bracket a run: (perf_counter, thread CPU, run-queue wait).
_KEEP_MARKS = 8192
# A look this much later than planned means the watcher could not get the GIL meanwhile.
_BLIND_S = 0.005
_KEEP_RESUMES = 1024
# Waits whose native callers are read even without a stack sample, per run.
_NATIVE_LOOKS = 3


Marks = tuple[tuple[float, float, float], ...]


def _mode(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return Counter(present).most_common(1)[0][0] if present else None


@dataclass(frozen=True)
class Sample:
    """One look at the stalled thread: its syscall and its stack (innermost first)."""

    syscall: _native.SyscallSample
    stack: tuple[FrameInfo, ...]
    # ran on a CPU while the watcher held the GIL (native code); None when not probed
    gil_free: bool | None = None
    # paths of the native libraries the thread was inside, innermost first (in syscalls)
    libraries: tuple[str, ...] = ()
    # waiting for the GIL, not for anything of the app's: it wants to run Python
    gil_wait: bool = False

    @property
    def activity(self) -> str:
        """``running`` for CPU work (also when it waits for the GIL), else the syscall."""
        return "running" if self.gil_wait else self.syscall.name


@dataclass(frozen=True)
class Focus:
    """Where a stall spent most of its samples, and what the thread did there."""

    stack: tuple[FrameInfo, ...]
    syscall: str | None
    endpoint: str | None
    libraries: tuple[str, ...]
    gil_free: bool


@dataclass
class Evidence:
    """What the monitor thread saw while one stall was going on."""

    samples: list[Sample] = field(default_factory=list)
    # socket peer of each descriptor seen in a syscall
    peers: dict[int, str | None] = field(default_factory=dict)

    @property
    def syscall(self) -> str | None:
        """What the thread mostly did: ``running``, or the syscall it sat in."""
        name: str | None = _mode(
            [s.activity for s in self.samples if s.syscall.name != "unknown"])
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
            return Focus((), self.syscall, None, (), False)
        _, group = max(groups.items(), key=lambda item: len(item[1]))
        names = [s.activity for s in group if s.syscall.name != "unknown"]
        fds = [s.syscall.fd for s in group if not s.gil_wait]
        probes = [s.gil_free for s in self.samples if s.gil_free is not None]
        libraries = (_mode([s.libraries for s in group if s.libraries])
                     or _mode([s.libraries for s in self.samples if s.libraries]) or ())
        return Focus(
            group[0].stack, _mode(names),
            _mode([self.peers.get(fd) for fd in fds if fd is not None]),
            libraries,
            bool(probes) and sum(probes) * 2 > len(probes),
        )


@dataclass(frozen=True)
class Stall:
    """One stretch in which a greenlet other than the hub ran without switching."""

    duration_s: float
    cpu_s: float
    phase: str
    evidence: Evidence
    # time the thread was runnable but waited for a CPU (a busy machine), from schedstat
    queued_s: float = 0.0
    # garbage collections that ran inside the stall
    collections: tuple[Collection, ...] = ()
    # the watcher could not look during it: native code kept the GIL
    unseen: bool = False
    # the stack read when the watcher got the GIL back (GIL-holding native code)
    resumed_stack: tuple[FrameInfo, ...] = ()

    @property
    def cpu_ratio(self) -> float:
        """CPU time over the time the thread could have run (a busy machine's share out)."""
        could_run = self.duration_s - self.queued_s
        return min(1.0, self.cpu_s / could_run) if could_run > 0 else 1.0

    @property
    def gc_s(self) -> float:
        return sum(c.end - c.start for c in self.collections)


@dataclass
class _Look:
    """What the watcher saw of one run of a greenlet (one switch count) at its looks."""

    phase: str
    first_t: float
    first_cpu: float
    last_t: float
    last_cpu: float
    evidence: Evidence = field(default_factory=Evidence)
    maps_read: bool = False
    native_looks: int = 0

    def cpu_share(self) -> float | None:
        window = self.last_t - self.first_t
        return min(1.0, (self.last_cpu - self.first_cpu) / window) if window > 0 else None


class HubMonitor:
    """Start it in the thread that runs the hub; ``stop()`` undoes it.

    The watcher looks every ``idle_tick_s`` while switches keep coming, and every
    ``tick_s`` once one greenlet has run through two looks. Each look costs the
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
        on_deadlock: Callable[[float, Evidence, bool], None] | None = None,
        on_heartbeat: Callable[[], None] | None = None,
        on_note: Callable[[str], None] | None = None,
        heartbeat_s: float = 1.0,
        is_app_file: Callable[[str], bool] = lambda path: True,
    ) -> None:
        self.warn_s = warn_s
        self.tick_s = tick_s
        self.idle_tick_s = max(idle_tick_s, tick_s)
        self.deadlock_s = deadlock_s
        self.on_deadlock = on_deadlock
        self.on_heartbeat = on_heartbeat
        self.on_note = on_note
        self.heartbeat_s = heartbeat_s
        self.is_app_file = is_app_file
        self.phase = "idle"
        self.gc = GcWatch()
        # seconds the watcher held the GIL looking at a running task (written by it only)
        self.held_s = 0.0
        self._hub = get_hub()
        self._ident = _get_ident()
        self._native_id = _get_native_id()
        self._cpu_clock = time.pthread_getcpuclockid(self._ident)
        self._reader = _native.SyscallReader(self._native_id)
        self._stacks = StackReader(self._ident)
        self._callers = _native.NativeCallers()
        # stacks read the moment the watcher got the GIL back after a blind stretch
        self._resumed: dict[int, tuple[FrameInfo, ...]] = {}
        self._schedstat = open_schedstat(self._native_id)
        # written by the trace function only: [switch count, time of last switch, running]
        self._state: list[Any] = [0, time.perf_counter(), None]
        # runs that lasted warn_s or more:
        # (switch count, start, end, greenlet, CPU at end, run-queue wait at end, phase)
        self._long_runs: list[tuple[int, float, float, Any, float, float, str]] = []
        self._marks: deque[tuple[float, float, float]] = deque(maxlen=_KEEP_MARKS)
        self._looks: dict[int, _Look] = {}
        self._watching: tuple[int, _Look] | None = None
        self._ignored: set[Any] = set()
        self._gil_words: tuple[int, int] | None = None
        self._previous_trace: Any = None
        self._stopped = False
        self._watch_errors: set[str] = set()
        self._switch_interval: float | None = None

    def _make_trace(self) -> Callable[[str, tuple[Any, Any]], None]:
        state, long_runs, warn = self._state, self._long_runs, self.warn_s
        clock, cpu, schedstat, monitor = (time.perf_counter, time.thread_time,
                                          self._schedstat, self)

        def trace(event: str, args: tuple[Any, Any]) -> None:
            now = clock()
            if now - state[1] >= warn:
                # rare: read this thread's own clocks at the end of the long run
                long_runs.append((state[0], state[1], now, args[0], cpu(),
                                  read_queued(schedstat), monitor.phase))
            state[0] += 1
            state[1] = now
            state[2] = args[1]

        return trace

    # -- the native thread -----------------------------------------------------
    def _watch(self) -> None:
        next_beat = time.perf_counter() + self.heartbeat_s
        try:
            while not self._stopped:
                watching = self._watching
                confirmed = watching is not None and watching[1].last_t > watching[1].first_t
                pause = self.tick_s if confirmed else self.idle_tick_s
                planned = time.perf_counter() + pause
                _sleep(pause)
                try:
                    now = self._look(blind=time.perf_counter() - planned >= _BLIND_S)
                    if self.on_heartbeat is not None and now >= next_beat:
                        next_beat = now + self.heartbeat_s
                        self.on_heartbeat()
                except Exception as exc:  # the monitor must outlive any one bad look
                    self._watch_failed(exc)
        finally:
            self._reader.close()

    def _watch_failed(self, exc: Exception) -> None:
        key = f"{type(exc).__name__}: {exc}"
        if key in self._watch_errors:
            return
        self._watch_errors.add(key)
        if self.on_note is not None:
            tb = traceback.extract_tb(exc.__traceback__)
            where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
            self.on_note(f"geventcheck's hub monitor hit an internal error ({key}{where}); "
                         "it went on watching, but evidence of one look may be missing")

    def _look(self, *, blind: bool = False) -> float:
        state = self._state
        count, _, active = state
        if blind and active is not None and active is not self._hub \
                and active not in self._ignored and count not in self._resumed:
            # Native code kept the GIL until just now: the thread gave it up at the first
            # check after that call returned, so its stack still shows the line that made
            # it. Read it before anything here lets go of the GIL.
            self._resumed[count] = self._stacks.read()
            if len(self._resumed) > _KEEP_RESUMES:
                del self._resumed[next(iter(self._resumed))]
        queued = read_queued(self._schedstat)  # lets go of the GIL: before the rest
        count, since, active = state
        now, cpu = time.perf_counter(), time.clock_gettime(self._cpu_clock)
        self._marks.append((now, cpu, queued))
        watching = self._watching
        if watching is not None and watching[0] != count:
            self._remember(*watching)
            watching = None
        if active is None or active is self._hub or active in self._ignored:
            self._watching = None
            return now
        if watching is None:
            self._watching = (count, _Look(self.phase, now, cpu, now, cpu))
            return now
        look = watching[1]
        look.last_t, look.last_cpu = now, cpu
        age = now - since
        if age >= min(self.warn_s / 2, 0.004):
            began = time.perf_counter()
            self._sample(look, count)
            # the audited thread could not run Python meanwhile: the audit's cost, not the task's
            self.held_s += time.perf_counter() - began
        if self.deadlock_s is not None and age >= self.deadlock_s:
            if self.on_deadlock is not None:
                share = look.cpu_share()
                spinning = look.evidence.syscall == "running" or (share or 0.0) >= 0.5
                self.on_deadlock(age, look.evidence, spinning)
            self.on_deadlock = None  # once: the parent ends this process
        return now

    def _remember(self, count: int, look: _Look) -> None:
        if not look.evidence.samples and look.last_t - look.first_t < self.warn_s / 2:
            return  # a short run: the trace alone judges it
        self._looks[count] = look
        if len(self._looks) > _KEEP_LOOKS:
            # keep the longest: evidence of an early long stall must survive a busy task
            looks = self._looks
            shortest = min(list(looks), key=lambda c: looks[c].last_t - looks[c].first_t)
            del self._looks[shortest]

    def _sample(self, look: _Look, count: int) -> None:
        evidence = look.evidence
        if len(evidence.samples) >= _MAX_SAMPLES:
            return
        syscall = self._reader.read()
        gil_wait = self._is_gil_wait(syscall)
        gil_free = self._runs_without_gil() if len(evidence.samples) < 2 else None
        stack: tuple[FrameInfo, ...] = ()
        libraries: tuple[str, ...] = ()
        if len(evidence.samples) % _STACK_EVERY == 0:
            # faulthandler reads the frames in C while this thread holds the GIL
            stack = self._stacks.read()
        waiting = syscall.name not in ("running", "unknown") and not gil_wait
        if waiting and (stack or look.native_looks < _NATIVE_LOOKS):
            # the native callers of a wait: on stack samples, and on the first few waits
            # whatever their turn, so a short stall still names its library
            if not look.maps_read:
                self._callers.refresh()
                look.maps_read = True
            libraries = self._callers.libraries(syscall.sp)
            look.native_looks += 1
        if self._state[0] != count:
            return  # the run ended while this thread looked: the look is of the next one
        evidence.samples.append(Sample(syscall, stack, gil_free, libraries, gil_wait))
        if syscall.fd is not None and syscall.fd not in evidence.peers and not gil_wait:
            evidence.peers[syscall.fd] = _native.peer_of_fd(syscall.fd)

    def _is_gil_wait(self, syscall: _native.SyscallSample) -> bool:
        words = self._gil_words
        return (syscall.name == "futex" and syscall.uaddr is not None and words is not None
                and words[0] <= syscall.uaddr <= words[1])

    def _runs_without_gil(self) -> bool:
        """Does the stalled thread burn CPU while this thread holds the GIL? Then it is
        inside native code that let go of the GIL; a Python loop would be waiting for it."""
        before = time.clock_gettime(self._cpu_clock)
        deadline = time.perf_counter() + _GIL_PROBE_S
        while time.perf_counter() < deadline:
            pass
        return time.clock_gettime(self._cpu_clock) - before > _GIL_PROBE_S / 4

    # -- telling a wait for the GIL from a wait for the app's lock ---------------
    def _calibrate(self) -> None:
        self._gil_words = gil_futex_words(self._native_id)

    # -- control ---------------------------------------------------------------
    def ignore(self, glet: Any) -> None:
        """Stalls of this greenlet (the runner's own) are not the task's."""
        self._ignored.add(glet)

    def start(self) -> None:
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, self.tick_s))
        self._calibrate()
        self.gc.install()
        self._state[1] = time.perf_counter()
        self._state[2] = greenlet.getcurrent()
        self._previous_trace = greenlet.settrace(self._make_trace())
        _start_thread(self._watch, ())

    def stop(self) -> None:
        self._stopped = True
        greenlet.settrace(self._previous_trace)
        self.gc.uninstall()
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)

    def settle(self) -> None:
        """Between measured runs: collect and freeze garbage, drop what was measured, and
        read the clocks, so the next run's CPU time is bracketed from its very start."""
        self.gc.settle()
        self.take_stalls()
        queued = read_queued(self._schedstat)
        self._marks.append((time.perf_counter(), time.thread_time(), queued))

    def queued_ms(self) -> float:
        """Milliseconds the watched thread has waited runnable for a CPU so far (schedstat):
        a busy machine's share of a run, read through the monitor's own descriptor."""
        return read_queued(self._schedstat) * 1000

    def looked_queued_ms(self) -> float:
        """``queued_ms()`` as the watcher last read it (at most one tick ago), for a caller
        that must not let go of the GIL: reading schedstat does."""
        marks = self._marks
        return marks[-1][2] * 1000 if marks else self.queued_ms()

    @staticmethod
    def _mark_at_or_before(marks: Marks, t: float) -> tuple[float, float, float] | None:
        index = bisect.bisect_right(marks, (t, math.inf, math.inf))
        return marks[index - 1] if index else None

    @staticmethod
    def _longest_blind(marks: Marks, start: float, end: float) -> float:
        """The longest stretch of [start, end] in which the watcher took no reading: it
        could not get the GIL (or the machine did not run it)."""
        low = bisect.bisect_right(marks, (start, math.inf, math.inf))
        high = bisect.bisect_left(marks, (end, -math.inf, -math.inf))
        inside = [m[0] for m in marks[low:high]]
        points = [start, *inside, end]
        return max(b - a for a, b in itertools.pairwise(points))

    def take_stalls(self) -> list[Stall]:
        """The stalls since the last call, each with what the watcher saw of it."""
        watching = self._watching
        if watching is not None:
            self._remember(*watching)
        runs, self._long_runs[:] = list(self._long_runs), []
        # one copy, taken in C while this thread holds the GIL: the watcher appends meanwhile
        marks: Marks = tuple(self._marks)
        # the trace read the CPU clock at the end of each long run: exact marks for the run
        # that follows it (copies that keep the GIL one after another)
        cpu_marks: Marks = tuple(sorted(
            marks + tuple((run[2], run[4], run[5]) for run in runs)))
        resumed, self._resumed = self._resumed, {}
        stalls = []
        for count, start, end, glet, cpu_end, queued_end, phase in runs:
            if glet is self._hub or glet in self._ignored:
                continue
            duration = end - start
            look = self._looks.pop(count, None)
            evidence = look.evidence if look is not None else Evidence()
            before = self._mark_at_or_before(cpu_marks, start)
            if before is not None:
                # CPU from a reading at most one tick before the start to the trace's at the end
                cpu = min(duration, max(0.0, cpu_end - before[1]))
            elif look is not None and look.cpu_share() is not None:
                cpu = duration * (look.cpu_share() or 0.0)
            else:
                cpu = duration if evidence.syscall == "running" else 0.0
            queued = 0.0
            if before is not None:
                queued = min(duration, max(0.0, queued_end - before[2]))
            blind = self._longest_blind(marks, start, end)
            unseen = len(evidence.samples) < 2 and blind >= max(3 * self.idle_tick_s,
                                                                 self.warn_s)
            stalls.append(Stall(
                duration, cpu, look.phase if look is not None else phase, evidence,
                queued_s=queued, collections=tuple(self.gc.within(start, end)),
                unseen=unseen,
                resumed_stack=resumed.get(count, ()) if unseen else (),
            ))
        return stalls


def open_schedstat(native_id: int) -> int | None:
    try:
        return os.open(f"/proc/self/task/{native_id}/schedstat", os.O_RDONLY)
    except OSError:
        return None


def read_queued(fd: int | None) -> float:
    """Seconds the thread has waited runnable for a CPU (field 2 of schedstat)."""
    if fd is None:
        return 0.0
    try:
        return int(os.pread(fd, 128, 0).split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def all_stacks() -> list[str]:
    """Every OS thread's stack (from faulthandler) and every suspended greenlet's stack,
    for a deadlock report. Called only while the audited thread is blocked for good."""
    import gc

    reader = StackReader(0)
    lines: list[str] = []
    try:
        import faulthandler

        reader._out.clear()
        faulthandler.dump_traceback(file=reader._out.file, all_threads=True)
        lines.extend(line.rstrip() for line in reader._out.read().splitlines())
    finally:
        reader.close()
    for obj in gc.get_objects():
        if isinstance(obj, greenlet.greenlet) and not obj.dead and obj.gr_frame is not None:
            # no repr(): a Greenlet's repr formats its arguments, which is the app's code
            lines.append(f"greenlet {type(obj).__name__} at {id(obj):#x}:")
            lines.extend("  " + line.rstrip() for line in traceback.format_stack(obj.gr_frame))
    return lines


def gil_futex_words(native_id: int) -> tuple[int, int] | None:
    """Learn the futex words of the GIL: where a thread that wants to run Python waits.

    Call it from the thread ``native_id`` names: it keeps a Python loop going while a
    helper holds the GIL a little longer than a hand-over takes and reads where the loop
    waits. None when no wait was seen (a busy machine, for up to 0.5 s).
    """
    words: list[int] = []
    done: list[bool] = []
    reader = _native.SyscallReader(native_id)

    def helper() -> None:
        try:
            # until a few words are seen: on a busy machine one round may see none
            deadline = time.perf_counter() + 0.5
            attempts = 0
            while (len(words) < 4 or attempts < 16) and time.perf_counter() < deadline:
                attempts += 1
                _sleep(0.0005)
                spin_until = time.perf_counter() + 0.0003
                while time.perf_counter() < spin_until:
                    pass
                sample = reader.read()
                if sample.name == "futex" and sample.uaddr is not None:
                    words.append(sample.uaddr)
        finally:
            done.append(True)

    _start_thread(helper, ())
    deadline = time.perf_counter() + 2.0
    while not done and time.perf_counter() < deadline:
        pass
    reader.close()
    # the GIL's mutex and condition variables sit together in one small struct
    return (min(words) - 256, max(words) + 256) if words else None
