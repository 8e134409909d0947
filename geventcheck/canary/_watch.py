"""Times every hub loop iteration without a per-switch trace, and looks at the long ones.

The loop's own watchers mark an iteration: a ``check`` watcher at top priority runs right
after the poll returns, a ``prepare`` watcher at the lowest priority runs last before the
next poll. Everything between them (every greenlet resumed in that iteration) kept the
hub from polling: a gap longer than ``min_stall_s`` is a stall. That costs two callbacks
per iteration, whatever the number of greenlet switches (FIELD-NOTES: a 50 ms native
sleep timed as a 50.5 ms gap).

Which greenlet stalled comes from samples: a native thread (the unpatched originals)
wakes every ``sample_every_s``; when an iteration has been running longer than
``min_stall_s``, it reads the stalled thread's syscall, the native libraries on its stack
and, through faulthandler while it holds the GIL, its Python stack. Each wake takes the
GIL from a busy hub, so it wakes only as often as every stall past the threshold needs
to get a look. The watch never walks another thread's frames and never runs the app's
code. A look that comes much later than planned means native code kept the GIL
meanwhile: the stack it reads is where the thread resumed, kept apart from the samples.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gevent.monkey import get_original

from ..detectors import _native
from ..detectors._hub import gil_futex_words, open_schedstat, read_queued
from ..detectors._stacks import FrameInfo, StackReader

_sleep = get_original("time", "sleep")
_start_thread = get_original("_thread", "start_new_thread")
_get_ident = get_original("_thread", "get_ident")
_get_native_id = get_original("_thread", "get_native_id")

# A look this much later than planned: the sampler could not get the GIL meanwhile, so
# native code kept it. Handing the GIL over from a thread running Python took up to three
# switch intervals here (15 ms), so lateness below four of them proves nothing.
_BLIND_S = 0.02
# Stretches in which the sampler could not look, kept to mark the stalls they cover.
_KEEP_BLIND = 256
# The watched thread's run-queue wait, read at each look of the sampler: (when, seconds).
_KEEP_MARKS = 4096
# Looks kept per stall: enough to see where it spent its time, bounded for endless ones.
_MAX_SAMPLES = 32
# How often the sampler re-reads /proc/self/maps, at most (only during stalls).
_MAPS_EVERY_S = 5.0
# Stalls waiting to be digested; the oldest go when nobody digests them.
_KEEP_STALLS = 1024


@dataclass(frozen=True)
class Look:
    """One look at the thread during a long iteration."""

    at: float  # perf_counter
    syscall: _native.SyscallSample
    stack: tuple[FrameInfo, ...]
    libraries: tuple[str, ...] = ()
    peer: str | None = None
    gil_wait: bool = False  # waiting for the GIL this sampler held: it wants to run Python


@dataclass
class LoopStall:
    """One loop iteration that kept the hub from polling for ``duration_s``."""

    start: float  # perf_counter when the poll returned
    duration_s: float
    cpu_s: float  # CPU the thread used meanwhile
    cpu_start: float  # the thread's CPU clock when the poll returned
    looks: list[Look] = field(default_factory=list)
    # where the thread stood when the sampler got the GIL back after a blind stretch
    resumed: tuple[FrameInfo, ...] = ()
    resumed_at: float = 0.0
    blind: bool = False
    # stretches (start, end) in which the sampler could not get the GIL
    blind_spans: tuple[tuple[float, float], ...] = ()
    # the thread's run-queue wait at moments in and around the stall: (when, seconds)
    queue_marks: tuple[tuple[float, float], ...] = ()

    def queued_between(self, start: float, end: float) -> float:
        """Seconds the thread waited runnable for a CPU (a busy machine) within [start,
        end], from the readings inside it: never more than it really waited."""
        inside = [q for t, q in self.queue_marks if start <= t <= end]
        return max(inside) - min(inside) if len(inside) >= 2 else 0.0

    def blind_share(self, start: float, end: float) -> float:
        """How much of [start, end] the sampler spent unable to look."""
        covered = sum(max(0.0, min(end, b) - max(start, a)) for a, b in self.blind_spans)
        return covered / (end - start) if end > start else 0.0


class LoopWatch:
    """Stalls of one hub's loop; ``take()`` hands over those found since the last call."""

    def __init__(self, loop: Any, *, min_stall_s: float = 0.01,
                 sample_every_s: float = 0.04,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.loop = loop
        self.min_stall_s = min_stall_s
        self.sample_every_s = sample_every_s
        self.iterations = 0
        self._on_error = on_error or (lambda message: None)
        self._began: float | None = None
        self._cpu_began = 0.0
        self._looks: list[Look] = []
        self._resumed: tuple[FrameInfo, ...] = ()
        self._resumed_at = 0.0
        self._blind = False
        self._stalls: deque[LoopStall] = deque(maxlen=_KEEP_STALLS)
        self._blind_spans: deque[tuple[float, float]] = deque(maxlen=_KEEP_BLIND)
        self._marks: deque[tuple[float, float]] = deque(maxlen=_KEEP_MARKS)
        self._main_sched: int | None = None
        self._check: Any = None
        self._prepare: Any = None
        self._running = False
        self._ident = 0
        self._native_id = 0
        self._error_reported = False
        self._gil_words: tuple[int, int] | None = None
        self._maps_read = 0.0

    # -- in the hub: two callbacks per iteration ----------------------------------------
    def _on_check(self) -> None:
        self._began = time.perf_counter()
        self._cpu_began = time.thread_time()

    def _on_prepare(self) -> None:
        began = self._began
        self._began = None
        self.iterations += 1
        if began is None:
            return
        end = time.perf_counter()
        duration = end - began
        if duration < self.min_stall_s:
            if self._looks or self._resumed:
                self._looks, self._resumed, self._blind = [], (), False
            return
        self._marks.append((end, read_queued(self._main_sched)))  # rare: stalls only
        self._stalls.append(LoopStall(began, duration, time.thread_time() - self._cpu_began,
                                      self._cpu_began, self._looks, self._resumed,
                                      self._resumed_at, self._blind))
        self._looks, self._resumed, self._blind = [], (), False

    # -- the sampler thread --------------------------------------------------------------
    def _sample_loop(self, stacks: StackReader, syscalls: _native.SyscallReader) -> None:
        callers = _native.NativeCallers()
        blind_after = max(_BLIND_S, 4 * sys.getswitchinterval())
        own_sched = open_schedstat(_get_native_id())
        queued = (read_queued(self._main_sched), read_queued(own_sched))
        while self._running:
            planned = time.perf_counter() + self.sample_every_s
            _sleep(self.sample_every_s)
            now = time.perf_counter()
            before, queued = queued, (read_queued(self._main_sched), read_queued(own_sched))
            self._marks.append((now, queued[0]))
            # Late because either thread waited for a CPU (a busy machine) is no sign of
            # native code keeping the GIL; late beyond that is.
            explained = (queued[0] - before[0]) + (queued[1] - before[1])
            late = now - planned - explained > blind_after
            if late:
                self._blind_spans.append((planned, now))
            began = self._began
            if began is None or now - began < self.min_stall_s:
                continue  # no iteration under way, or too young to be a stall
            try:
                self._look(began, late, stacks, syscalls, callers)
            except Exception as exc:  # the watch goes on; the worker hears of it once
                if not self._error_reported:
                    self._error_reported = True
                    self._on_error(f"the canary's sampler failed once and goes on: {exc!r}")
            # reading files lets go of the GIL: a look that took long waited to get it back
            before, queued = queued, (read_queued(self._main_sched), read_queued(own_sched))
            after = time.perf_counter()
            explained = (queued[0] - before[0]) + (queued[1] - before[1])
            if after - now - explained > blind_after:
                self._blind_spans.append((now, after))

    def _look(self, began: float, late: bool, stacks: StackReader,
              syscalls: _native.SyscallReader, callers: _native.NativeCallers) -> None:
        at = time.perf_counter()
        stack = stacks.read()  # holds the GIL: the thread stands still, in Python or in C
        if self._began != began:
            return  # the iteration ended while this thread waited for the GIL
        if late:
            # the thread just gave the GIL back: this is where it resumed, not where it was
            self._resumed, self._resumed_at, self._blind = stack, time.perf_counter(), True
            return
        if len(self._looks) >= _MAX_SAMPLES:
            return
        syscall = syscalls.read()
        words = self._gil_words
        gil_wait = (syscall.name == "futex" and syscall.uaddr is not None
                    and words is not None and words[0] <= syscall.uaddr <= words[1])
        libraries: tuple[str, ...] = ()
        peer = None
        if syscall.name not in ("running", "unknown") and not gil_wait:
            if time.perf_counter() - self._maps_read > _MAPS_EVERY_S:
                callers.refresh()  # libraries loaded and thread stacks made since
                self._maps_read = time.perf_counter()
            libraries = callers.libraries(syscall.sp)
            if syscall.fd is not None:
                peer = _native.peer_of_fd(syscall.fd)
        if self._began == began:
            self._looks.append(Look(at, syscall, stack, libraries, peer, gil_wait))

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Call from the thread that runs the hub (the worker's main thread)."""
        self._ident, self._native_id = _get_ident(), _get_native_id()
        self._main_sched = open_schedstat(self._native_id)
        # a look finds a thread that runs Python waiting for the GIL the sampler holds:
        # that futex is CPU work, not a lock of the app's
        self._gil_words = gil_futex_words(self._native_id)
        self._check = self.loop.check()
        self._check.priority = self.loop.MAXPRI
        self._check.start(self._on_check)
        self._prepare = self.loop.prepare()
        self._prepare.priority = self.loop.MINPRI
        self._prepare.start(self._on_prepare)
        self._running = True
        _start_thread(self._sample_loop, (StackReader(self._ident),
                                          _native.SyscallReader(self._native_id)))

    def stop(self) -> None:
        self._running = False
        for watcher in (self._check, self._prepare):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        self._check = self._prepare = None

    def take(self) -> list[LoopStall]:
        """The stalls found since the last call, oldest first."""
        taken = []
        while self._stalls:
            taken.append(self._stalls.popleft())
        spans, marks = list(self._blind_spans), list(self._marks)
        for stall in taken:
            end = stall.start + stall.duration_s
            stall.blind_spans = tuple((a, b) for a, b in spans if a < end and b > stall.start)
            stall.queue_marks = tuple((t, q) for t, q in marks if stall.start <= t <= end)
            if not stall.looks and not stall.blind:
                # nothing looked during it because the sampler could not get the GIL
                stall.blind = stall.blind_share(stall.start, end) >= 0.5
        return taken
