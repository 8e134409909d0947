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
from .._paths import app_frame, caller_is_own, is_audited_file, relative
from . import _callee, _native
from ._drivers import BLOCKING_FIXES, blocking_driver_of

if TYPE_CHECKING:
    from ._hub import FrameInfo, Stall

KINDS = ("blocking-call", "cpu-bound", "unsafe-driver", "warm-up")

# A stall whose thread burned at least this share of the wall time on a CPU is CPU work.
CPU_RATIO = 0.5

# What findings say, kept in one place so the wording can be reviewed as a whole.
MESSAGES = {
    "cpu": "ran on the CPU for {own:g} ms without yielding to the hub",
    "cpu-native-gil": "ran native code that kept the GIL for {own:g} ms: neither the hub "
                      "nor any thread could run",
    "wait": "blocked the hub for {own:g} ms",
    "wait-native-gil": "blocked the hub and every thread for {own:g} ms in native code "
                       "that kept the GIL while it waited",
    "gc": "garbage collection ran for {gc:g} ms inside this task ({collections}); that is "
          "the process's garbage, not the task's work, and it is not judged",
    "own": "geventcheck's own work stalled the hub for {wall:g} ms in this run "
           "({where}); it is the audit's overhead and not judged",
}
FIXES = {
    "cpu": "route this task to a prefork queue: CPU work needs a process, not a greenlet",
    "cpu-native": "route this task to a prefork queue: CPU work needs a process, not a "
                  "greenlet, or offload the native call with "
                  "gevent.get_hub().threadpool.apply(...) since it releases the GIL",
    "gil": "this native call keeps the GIL, so no thread can help: route the task to a "
           "prefork queue, or use a library that releases the GIL",
    "system": "use subprocess.run (cooperative once patched) instead of os.system / os.wait",
    "ctypes": "run the native call in the hub's threadpool: "
              "geventcheck.patches.run_blocking({name}, *args) (bounded; or "
              "gevent.get_hub().threadpool.apply({name}, args))",
    "futex": "use gevent.lock / gevent.queue instead of native (threading before patching, "
             "multiprocessing) locks and queues, or route this task to a prefork queue",
    "flock": "take the file lock in gevent.get_hub().threadpool, or use a gevent.lock",
    "socket": "use the socket module after patching, not _socket or sockets created before it",
    "other": "run the blocking call in the hub's threadpool with "
             "geventcheck.patches.run_blocking(fn, *args) (or "
             "gevent.get_hub().threadpool.apply(...)), or route this task to a prefork queue",
}


def _blocking_fix(syscall: str | None, callee: str | None,
                  libraries: tuple[str, ...] = ()) -> str:
    callee = callee or ""
    if callee.startswith("ctypes "):
        return FIXES["ctypes"].format(name=callee.split()[-1])
    rules = (
        (callee == "os.system" or syscall in ("wait4", "waitid"), "system"),
        (syscall == "futex", "futex"),
        (syscall in ("flock", "fcntl"), "flock"),
        (callee.startswith("socket.") or "_socket" in libraries, "socket"),
    )
    return FIXES[next((key for matched, key in rules if matched), "other")]


def callee_of(stack: tuple[FrameInfo, ...], where: FrameInfo | None) -> str | None:
    """Name the call the app's line was making; the frame inside it says which call."""
    if where is None or where.line <= 0:
        return None
    index = stack.index(where)
    inner = stack[index - 1].function if index > 0 else None
    try:
        return _callee.name_call(where.file, where.line, inner)
    except Exception:  # naming is a courtesy: never lose the finding over it
        return None


def _is_cpu_work(stall: Stall, syscall: str | None) -> bool:
    """Samples that find the thread running (or wanting the GIL) are CPU work whatever the
    CPU clock says: a VM's stolen time is in neither clock. A futex wait that burned the
    CPU meanwhile was a hand-over of the GIL, not a lock: a lock wait burns nothing.
    Without samples, the CPU clock decides."""
    if syscall == "futex" and stall.cpu_ratio >= CPU_RATIO:
        return True
    if syscall is not None and syscall != "unknown":
        return syscall == "running"
    return stall.cpu_ratio >= CPU_RATIO


def _collections(stall: Stall) -> str:
    gens = sorted({c.generation for c in stall.collections})
    collected = sum(c.collected for c in stall.collections)
    return (f"generation {', '.join(map(str, gens))}, {collected} objects freed, "
            f"{len(stall.collections)} collection{'s' * (len(stall.collections) != 1)}")


def stall_findings(
    stalls: Iterable[Stall],
    *,
    threshold_s: float,
    warn_s: float = 0.0,
    app_roots: tuple[str, ...] = (),
    blocking_drivers: frozenset[str] = frozenset(),
    run: int | None = None,
) -> list[Finding]:
    """One finding per stall (merge them with ``merge``).

    A stall is judged by what the task did in it: CPU work by its CPU time, a wait by
    its wall time less the time the thread waited for a CPU; garbage collections are
    taken out of both. What is left below ``warn_s`` was not the task's.
    """
    findings: list[Finding] = []
    for stall in stalls:
        focus = stall.evidence.focus(lambda stack: app_frame(stack, app_roots))
        stack = focus.stack
        if not stack and any(is_audited_file(f.file, app_roots) for f in stall.resumed_stack):
            # where the thread stood when the monitor got the GIL back: the task's line
            # when the thread gave the GIL up before it left the task, else no help
            stack = stall.resumed_stack
        where = app_frame(stack, app_roots)
        syscall = focus.syscall
        cpu_bound = _is_cpu_work(stall, syscall)
        gc_s = min(stall.gc_s, stall.duration_s)
        if cpu_bound:
            own_s = max(0.0, min(stall.cpu_s, stall.duration_s - stall.queued_s) - gc_s)
        else:
            own_s = max(0.0, stall.duration_s - stall.queued_s - gc_s)
        wall_ms = round(stall.duration_s * 1000, 1)
        own_ms = round(own_s * 1000, 1)
        cpu_ms = round(stall.cpu_s * 1000, 1)
        location = dict(
            file=relative(where.file) if where else None,
            line=where.line if where and where.line > 0 else None,
            function=where.function if where else None,
            stack=tuple(str(f) for f in stack),
            cpu_ms=cpu_ms,
            phase=stall.phase,
            run=run,
            wall_ms=wall_ms,
        )
        if own_s < warn_s:
            if gc_s and gc_s >= stall.duration_s - stall.queued_s - warn_s:
                findings.append(Finding(
                    "cpu-bound", "info", MESSAGES["gc"].format(
                        gc=round(gc_s * 1000, 1), collections=_collections(stall)),
                    duration_ms=round(gc_s * 1000, 1), cause="garbage-collection",
                    **location))  # type: ignore[arg-type]
            # else: the machine kept the thread waiting for a CPU; no call of the task's
            continue
        if cpu_bound and focus.stack and caller_is_own(focus.stack):
            top = stack[0]
            findings.append(Finding(
                "cpu-bound", "info", MESSAGES["own"].format(
                    wall=wall_ms, where=f"{relative(top.file)}:{top.line} in {top.function}"),
                duration_ms=own_ms, cause="geventcheck", **location))  # type: ignore[arg-type]
            continue
        callee = callee_of(stack, where)
        libraries = tuple(dict.fromkeys(_native.library_label(p) for p in focus.libraries))
        severity: Severity = "error" if own_s > threshold_s else "warning"
        in_function = f" in {where.function}()" if where else (
            " (the monitor could not look while native code held the GIL, so the line is "
            "unknown)" if stall.unseen else "")
        adjusted = []
        if stall.queued_s >= 0.001:
            adjusted.append(f"{stall.queued_s * 1000:.1f} ms waiting for a CPU")
        if gc_s >= 0.001:
            adjusted.append(f"{gc_s * 1000:.1f} ms garbage collection")
        if cpu_bound and stall.duration_s - stall.cpu_s - stall.queued_s >= 0.005:
            adjusted.append("time the machine did not give it")
        note = f"; {wall_ms:g} ms wall, less {' and '.join(adjusted)}" if adjusted else ""
        endpoint = None
        if cpu_bound:
            kind = "cpu-bound"
            if stall.unseen:
                what = MESSAGES["cpu-native-gil"].format(own=own_ms)
                native = callee
                fix = FIXES["gil"]
            else:
                # Burning CPU while the watcher held the GIL: native code that let go of it.
                native = callee if focus.gil_free else None
                what = MESSAGES["cpu"].format(own=own_ms)
                fix = FIXES["cpu-native"] if native else FIXES["cpu"]
            what += f" ({cpu_ms:g} ms CPU{note}){in_function}"
            if native:
                what += f", inside {native} (native code)"
        else:
            kind = "blocking-call"
            if stall.unseen:
                what = MESSAGES["wait-native-gil"].format(own=own_ms)
                call = callee
                fix = FIXES["gil"]
            else:
                unnamed = f"in the {syscall} syscall" if syscall not in (None, "running") else ""
                waiting = _native.WAIT_WORDS.get(syscall or "", unnamed)
                inside = f"({', '.join(libraries)})" if libraries else ""
                packages = [p for p in dict.fromkeys(
                    _native.library_package(path) for path in focus.libraries) if p]
                owner = packages[0] if packages and not (callee or "").startswith(
                    packages[0]) else None
                call = " ".join(x for x in (owner, callee, inside, waiting) if x)
                what = MESSAGES["wait"].format(own=own_ms) + (f" in {call}" if call else "")
                endpoint = focus.endpoint
                if endpoint:
                    what += f" on {endpoint}"
                fix = _blocking_fix(syscall, callee, libraries)
            what += f" ({cpu_ms:g} ms CPU{note}){in_function}"
            native = call or None
        if stall.phase == "warm-up":
            findings.append(Finding(
                "warm-up", "info",
                f"warm-up run (not judged): {what}; first-run costs such as imports and "
                "new connections are expected here", native=native, endpoint=endpoint,
                fix=None, duration_ms=own_ms, **location))  # type: ignore[arg-type]
            continue
        findings.append(Finding(kind, severity, what, native=native, endpoint=endpoint,
                                fix=fix, duration_ms=own_ms,
                                **location))  # type: ignore[arg-type]
        driver = None if cpu_bound else blocking_driver_of(
            [f.file for f in stack] + list(focus.libraries), callee, set(blocking_drivers))
        if driver:
            findings.append(Finding(
                "unsafe-driver", severity,
                f"{driver} blocks the hub: {what}", native=native, endpoint=endpoint,
                fix=BLOCKING_FIXES[driver], duration_ms=own_ms,
                **location))  # type: ignore[arg-type]
    return findings


def merge_key(f: Finding) -> tuple[object, ...]:
    """CPU work is one finding per function; a blocking call one per line."""
    line = None if f.kind == "cpu-bound" else f.line
    return (f.kind, f.cause, f.file, line, f.function)


def merge(findings: Iterable[Finding]) -> list[Finding]:
    """Fold repeats of the same kind at the same place into one, keeping the worst."""
    merged: dict[tuple[object, ...], Finding] = {}
    for f in findings:
        key = merge_key(f)
        seen = merged.get(key)
        if seen is None:
            merged[key] = f
            continue
        worst = f if (f.duration_ms or 0) > (seen.duration_ms or 0) else seen
        severity = "error" if "error" in (f.severity, seen.severity) else worst.severity
        merged[key] = dataclasses.replace(worst, severity=severity, count=seen.count + f.count)
    return list(merged.values())
