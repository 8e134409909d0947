"""The hub monitor itself, in a patched subprocess: what it sees and that it cannot die.

Each test runs a short script under ``gevent.monkey.patch_all()`` in its own process, so
neither patching nor the monitor's trace leaks into this test run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PRELUDE = """
from gevent import monkey; monkey.patch_all()
import ctypes, json, sys, time
import gevent, greenlet
from geventcheck.detectors._hub import HubMonitor
from geventcheck.detectors._stalls import stall_findings

notes = []
monitor = HubMonitor(0.01, on_note=notes.append)
monitor.start()
monitor.ignore(greenlet.getcurrent())

def run(fn, *args):
    monitor.settle()
    gevent.spawn(fn, *args).join()
    return monitor.take_stalls()

def summary(stalls):
    return [{"ms": round(s.duration_s * 1000, 1), "cpu": round(s.cpu_s * 1000, 1),
             "samples": len(s.evidence.samples), "syscall": s.evidence.syscall,
             "unseen": s.unseen, "ratio": s.cpu_ratio,
             "stack": [f.function for f in s.evidence.stack or s.resumed_stack]}
            for s in stalls]
"""


def _run(body: str) -> dict:
    script = PRELUDE + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_failing_look_is_reported_once_and_the_monitor_keeps_watching() -> None:
    out = _run("""
        real_read = monitor._reader.read
        def broken():
            raise RuntimeError("proc vanished")
        monitor._reader.read = broken
        first = run(lambda: ctypes.CDLL(None).usleep(60_000))
        monitor._reader.read = real_read
        second = run(lambda: ctypes.CDLL(None).usleep(60_000))
        print(json.dumps({"notes": notes, "first": summary(first), "second": summary(second)}))
    """)
    assert len(out["notes"]) == 1 and "proc vanished" in out["notes"][0]
    # the stall during the failures is still timed by the trace; later ones are sampled
    assert [s["ms"] >= 55 for s in out["first"]] == [True]
    [second] = out["second"]
    assert second["samples"] > 0 and second["syscall"] == "clock_nanosleep"


def test_the_monitor_never_runs_the_apps_code_while_it_looks() -> None:
    out = _run("""
        calls = []
        class Lazy:
            def __getattr__(self, name):
                calls.append(name)
                raise RuntimeError("app code ran in the monitor")
            def __repr__(self):
                calls.append("repr")
                return "Lazy()"
        lazy = Lazy()
        def task(proxy):
            libc = ctypes.CDLL(None)
            libc.usleep(80_000)
        stalls = run(task, lazy)
        findings = stall_findings(stalls, threshold_s=0.05, warn_s=0.01)
        print(json.dumps({"calls": calls, "notes": notes,
                          "kinds": [f.kind for f in findings]}))
    """)
    assert out == {"calls": [], "notes": [], "kinds": ["blocking-call"]}


def test_evidence_of_an_early_stall_survives_a_busy_task() -> None:
    out = _run("""
        def busy():
            ctypes.CDLL(None).usleep(80_000)  # the early stall
            for _ in range(20_000):
                gevent.sleep(0)
        # the longest: a busy machine may add a short stall of its own to the loop
        stall = max(run(busy), key=lambda s: s.duration_s)
        print(json.dumps(summary([stall])[0]))
    """)
    assert out["samples"] > 0 and out["syscall"] == "clock_nanosleep"
    assert "busy" in out["stack"]


def test_native_code_that_keeps_the_gil_is_timed_with_its_cpu() -> None:
    out = _run("""
        import math
        wait = run(lambda: ctypes.PyDLL(None).usleep(120_000))
        cpu = run(lambda: math.factorial(60_000))
        print(json.dumps({"wait": summary(wait), "cpu": summary(cpu)}))
    """)
    [wait] = out["wait"]
    [cpu] = out["cpu"]
    assert wait["unseen"] and wait["ms"] >= 115 and wait["ratio"] < 0.3
    # CPU over the time the machine let the thread run
    assert cpu["unseen"] and cpu["ratio"] > 0.5


def test_a_python_loop_waiting_for_the_gil_is_not_a_lock_wait() -> None:
    out = _run("""
        def loop():
            end = time.perf_counter() + 0.1
            while time.perf_counter() < end:
                pass
        stalls = run(loop)
        findings = stall_findings(stalls, threshold_s=0.05, warn_s=0.01)
        print(json.dumps({"kinds": [f.kind for f in findings],
                          "messages": [f.message for f in findings]}))
    """)
    assert out["kinds"] == ["cpu-bound"]
    assert not any("lock" in m for m in out["messages"])
