"""Turning measured hub stalls into findings a developer can act on.

Pure functions: the hub monitor measures, this module judges. A stall that is
mostly CPU is ``cpu-bound``; one that is mostly waiting is ``blocking-call``
(plus ``unsafe-driver`` when a known blocking driver is on the stack).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .._model import Finding, Severity
from .._paths import is_audited_file, relative
from . import _native
from ._drivers import BLOCKING_FIXES, blocking_driver_of

if TYPE_CHECKING:
    from ._hub import FrameInfo, Stall

KINDS = ("blocking-call", "cpu-bound", "unsafe-driver", "warm-up")

# A stall whose thread burned at least this share of the wall time on a CPU is CPU work.
CPU_RATIO = 0.5

def audited_frame(stack: tuple[FrameInfo, ...], app_roots: tuple[str, ...]) -> FrameInfo | None:
    for frame in stack:
        # A comprehension or lambda is its own frame; name the function that holds it.
        if is_audited_file(frame.file, app_roots) and not frame.function.startswith("<"):
            return frame
    return stack[0] if stack else None


def _blocking_fix(syscall: str | None, callee: str | None) -> str:
    callee = callee or ""
    if callee == "os.system" or syscall in ("wait4", "waitid"):
        return "use subprocess.run (cooperative once patched) instead of os.system / os.wait"
    if callee.startswith("ctypes "):
        return (f"run the native call in the hub's threadpool: "
                f"gevent.get_hub().threadpool.apply({callee.split()[-1]}, args)")
    if syscall == "futex":
        return ("use gevent.lock / gevent.queue instead of native (threading before patching, "
                "multiprocessing) locks and queues, or route this task to a prefork queue")
    if syscall in ("flock", "fcntl"):
        return "take the file lock in gevent.get_hub().threadpool, or use a gevent.lock"
    if callee.startswith("socket."):
        return "use the socket module after patching, not _socket or sockets created before it"
    return ("run the blocking call in gevent.get_hub().threadpool.apply(...), "
            "or route this task to a prefork queue")


def stall_findings(
    stalls: Iterable[Stall],
    *,
    threshold_s: float,
    app_roots: tuple[str, ...] = (),
    blocking_drivers: frozenset[str] = frozenset(),
) -> list[Finding]:
    """One finding per stall (merge them with ``merge``)."""
    findings: list[Finding] = []
    for stall in stalls:
        focus = stall.evidence.focus(lambda stack: audited_frame(stack, app_roots))
        stack = focus.stack
        where = audited_frame(stack, app_roots)
        cpu_bound = stall.cpu_ratio >= CPU_RATIO
        duration_ms = round(stall.duration_s * 1000, 1)
        cpu_ms = round(stall.cpu_s * 1000, 1)
        severity: Severity = "error" if stall.duration_s > threshold_s else "warning"
        syscall = focus.syscall
        location = dict(
            file=relative(where.file) if where else None,
            line=where.line if where else None,
            function=where.function if where else None,
            stack=tuple(str(f) for f in stack),
            duration_ms=duration_ms,
            cpu_ms=cpu_ms,
            phase=stall.phase,
        )
        if not cpu_bound and syscall in (None, "running"):
            # Off the CPU yet in no syscall: the OS did not schedule the thread (a busy
            # machine), which is no call of the task's.
            continue
        in_function = f" in {where.function}()" if where else ""
        if cpu_bound:
            # Burning CPU while the watcher held the GIL: native code that let go of it.
            native = focus.callee if focus.gil_free else None
            kind = "cpu-bound"
            what = f"ran on the CPU for {duration_ms:g} ms without yielding to the hub"
            what += f" ({cpu_ms:g} ms CPU){in_function}"
            if native:
                what += f", inside {native} (native code)"
            fix = ("route this task to a prefork queue: CPU work needs a process, not a "
                   "greenlet" + (", or offload the native call with "
                                 "gevent.get_hub().threadpool.apply(...) since it releases "
                                 "the GIL" if native else ""))
            endpoint = None
        else:
            native = focus.callee
            kind = "blocking-call"
            unnamed = f"in the {syscall} syscall" if syscall not in (None, "running") else ""
            waiting = _native.WAIT_WORDS.get(syscall or "", unnamed)
            endpoint = focus.endpoint
            call = " ".join(x for x in (native, waiting) if x)
            what = f"blocked the hub for {duration_ms:g} ms" + (f" in {call}" if call else "")
            if endpoint:
                what += f" on {endpoint}"
            what += f" ({cpu_ms:g} ms CPU){in_function}"
            native = call or None
            fix = _blocking_fix(syscall, focus.callee)
        if stall.phase == "warm-up":
            findings.append(Finding(
                "warm-up", "info",
                f"warm-up run (not judged): {what}; first-run costs such as imports and "
                "new connections are expected here", native=native, endpoint=endpoint,
                fix=None, **location))  # type: ignore[arg-type]
            continue
        findings.append(Finding(kind, severity, what, native=native, endpoint=endpoint,
                                fix=fix, **location))  # type: ignore[arg-type]
        driver = None if cpu_bound else blocking_driver_of(
            [f.file for f in stack], focus.callee, set(blocking_drivers))
        if driver:
            findings.append(Finding(
                "unsafe-driver", severity,
                f"{driver} blocks the hub: {what}", native=native, endpoint=endpoint,
                fix=BLOCKING_FIXES[driver], **location))  # type: ignore[arg-type]
    return findings


def merge(findings: Iterable[Finding]) -> list[Finding]:
    """Fold repeats of the same kind at the same place into one, keeping the worst."""
    merged: dict[tuple[object, ...], Finding] = {}
    for f in findings:
        # CPU work is one finding per function; a blocking call one per line.
        line = None if f.kind == "cpu-bound" else f.line
        key = (f.kind, f.file, line, f.function)
        seen = merged.get(key)
        if seen is None:
            merged[key] = f
            continue
        worst = f if (f.duration_ms or 0) > (seen.duration_ms or 0) else seen
        severity = "error" if "error" in (f.severity, seen.severity) else worst.severity
        merged[key] = dataclasses.replace(worst, severity=severity, count=seen.count + f.count)
    return list(merged.values())
