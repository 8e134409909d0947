"""How a measured stall becomes (or does not become) the task's finding.

Each case here is one way the monitor used to blame the task for something it did not
do, or to miss something it did: a garbage collection, geventcheck's own work, a busy or
stolen CPU, a wait for the GIL, native code that kept the GIL, a one-off.
"""

from __future__ import annotations

import os
from pathlib import Path

from geventcheck._judge import borderline, reproduced
from geventcheck._model import Finding
from geventcheck.detectors import _native
from geventcheck.detectors._callee import name_call
from geventcheck.detectors._gcwatch import Collection
from geventcheck.detectors._hub import Evidence, FrameInfo, Sample, Stall
from geventcheck.detectors._stacks import parse_current, parse_dump
from geventcheck.detectors._stalls import stall_findings

APP_DIR = Path(__file__).parent / "apps" / "unitsrc"
APP_FILE = str(APP_DIR / "proj_tasks.py")
ROOTS = (str(APP_DIR) + os.sep,)
OWN_FILE = str(Path(__import__("geventcheck").__file__).parent / "runner" / "_child.py")


def _samples(name: str, stack: tuple[FrameInfo, ...], n: int = 8) -> Evidence:
    return Evidence(samples=[Sample(_native.SyscallSample(name), stack)] * n)


APP_STACK = (FrameInfo(APP_FILE, 50, "sync_orders"),)


def test_a_collection_inside_a_cooperative_task_is_not_the_tasks_stall() -> None:
    gc_run = Collection(0.0, 0.14, 2, 120_000)
    stall = Stall(0.142, 0.141, "solo", _samples("running", APP_STACK),
                  collections=(gc_run,))
    [f] = stall_findings([stall], threshold_s=0.05, warn_s=0.01, app_roots=ROOTS)
    assert (f.severity, f.cause) == ("info", "garbage-collection")
    assert "generation 2" in f.message and "120000 objects" in f.message


def test_a_stall_longer_than_its_collection_keeps_the_rest() -> None:
    stall = Stall(0.2, 0.2, "solo", _samples("running", APP_STACK),
                  collections=(Collection(0.0, 0.05, 2, 10),))
    [f] = stall_findings([stall], threshold_s=0.05, warn_s=0.01, app_roots=ROOTS)
    assert (f.kind, f.severity, f.duration_ms, f.wall_ms) == ("cpu-bound", "error", 150.0, 200.0)
    assert "50.0 ms garbage collection" in f.message


def test_geventcheck_own_work_is_overhead_not_the_tasks() -> None:
    stack = (FrameInfo(__import__("linecache").__file__, 136, "updatecache"),
             FrameInfo(OWN_FILE, 120, "_locate"), *APP_STACK)
    stall = Stall(0.08, 0.08, "solo", _samples("running", stack))
    [f] = stall_findings([stall], threshold_s=0.05, warn_s=0.01, app_roots=ROOTS)
    assert (f.severity, f.cause) == ("info", "geventcheck")
    assert "prefork" not in (f.fix or "")


def test_cpu_work_is_judged_by_its_cpu_time_not_a_busy_or_stolen_clock() -> None:
    # 45 ms of CPU work that took 62 ms of wall time: 5 ms runnable and waiting for a CPU,
    # the rest taken by the hypervisor (in no clock of the thread's)
    stall = Stall(0.062, 0.045, "solo", _samples("running", APP_STACK), queued_s=0.005)
    [f] = stall_findings([stall], threshold_s=0.05, warn_s=0.01, app_roots=ROOTS)
    assert (f.kind, f.severity, f.duration_ms) == ("cpu-bound", "warning", 45.0)


def test_a_thread_waiting_for_the_gil_is_cpu_work_not_a_native_lock() -> None:
    evidence = Evidence(samples=[Sample(_native.SyscallSample("futex", uaddr=1), APP_STACK,
                                        gil_wait=True)] * 6)
    [f] = stall_findings([Stall(0.1, 0.09, "solo", evidence)], threshold_s=0.05,
                         app_roots=ROOTS)
    assert f.kind == "cpu-bound" and "lock" not in f.message


def test_a_wait_on_the_apps_lock_is_still_a_blocking_call() -> None:
    evidence = _samples("futex", APP_STACK)
    [f] = stall_findings([Stall(0.1, 0.001, "solo", evidence)], threshold_s=0.05,
                         app_roots=ROOTS)
    assert f.kind == "blocking-call" and "native lock" in f.message
    assert "gevent.lock" in (f.fix or "")


def test_native_code_that_kept_the_gil_is_reported_without_samples() -> None:
    waiting = Stall(0.15, 0.002, "solo", Evidence(), unseen=True,
                    resumed_stack=(FrameInfo(APP_FILE, 42, "sync_orders"),))
    busy = Stall(0.15, 0.149, "solo", Evidence(), unseen=True)
    [wait] = stall_findings([waiting], threshold_s=0.05, warn_s=0.01, app_roots=ROOTS)
    [cpu] = stall_findings([busy], threshold_s=0.05, warn_s=0.01, app_roots=ROOTS)
    assert (wait.kind, wait.severity, wait.line) == ("blocking-call", "error", 42)
    assert "kept the GIL" in wait.message and wait.native == "cursor.execute"
    assert (cpu.kind, cpu.severity) == ("cpu-bound", "error")
    assert "kept the GIL" in cpu.message and "line is unknown" in cpu.message


def _error(run: int, line: int = 42) -> Finding:
    return Finding("blocking-call", "error", "blocked", file="t.py", line=line,
                   function="f", duration_ms=80.0, run=run, phase="solo")


def test_an_error_must_show_up_again_to_count() -> None:
    once = reproduced([_error(1), Finding("task-error", "warning", "x", run=2)])
    assert once[0].severity == "warning" and "not again" in once[0].message
    twice = reproduced([_error(1), _error(3)])
    assert [f.severity for f in twice] == ["error", "error"]


def test_a_verdict_near_the_threshold_says_it_is_borderline() -> None:
    near = borderline([Finding("cpu-bound", "warning", "m", duration_ms=45.2)], 50.0)
    assert near is not None and near.severity == "info" and "4.8 ms under" in near.message
    assert borderline([Finding("cpu-bound", "warning", "m", duration_ms=20.0)], 50.0) is None
    assert borderline([Finding("cpu-bound", "error", "m", duration_ms=300.0)], 50.0) is None


def test_faulthandler_dump_is_parsed_for_the_right_thread() -> None:
    dump = (
        "Thread 0x00007f0000000001 (most recent call first):\n"
        '  File "/other.py", line 3 in other\n\n'
        "Current thread 0x00007f00000000aa (most recent call first):\n"
        '  File "/app/tasks.py", line 12 in inner\n'
        '  File "/app/tasks.py", line ??? in outer\n'
    )
    frames = parse_dump(dump, 0x7F00000000AA)
    assert [(f.file, f.line, f.function) for f in frames] == [
        ("/app/tasks.py", 12, "inner"), ("/app/tasks.py", 0, "outer")]
    assert parse_dump(dump, 0x1234) == ()
    # a fatal-signal dump: the crashing thread is the one called "Current thread"
    assert [f.function for f in parse_current(dump)] == ["inner", "outer"]
    assert parse_current(dump.replace("Current thread", "Thread")) == ()


def test_calls_are_named_from_the_source_and_module_names() -> None:
    import importlib
    import sys

    sys.path.insert(0, str(APP_DIR))
    try:
        importlib.import_module("proj_tasks")
        assert name_call(APP_FILE, 46) == "hashlib.pbkdf2_hmac"  # a module-level name
        assert name_call(APP_FILE, 42) == "cursor.execute"  # a local: as written
        assert name_call(APP_FILE, 42, "execute") == "cursor.execute"
        assert name_call(APP_FILE, 31) is None  # no call on that line
        assert name_call("/nonexistent.py", 3) is None
    finally:
        sys.path.remove(str(APP_DIR))
        sys.modules.pop("proj_tasks", None)
