"""The unpatched side of an audit: starts the child, watches it, restarts it, gathers events.

The parent never imports the app or patches itself. It owns the watchdog: a
child that stops answering, dies or reports a blocked hub is killed, the task
gets a ``deadlock``/``timeout``/``crash`` finding, and a fresh child carries on
with the remaining tasks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._model import Driver, Environment, Finding, Settings
from .._paths import is_audited_file, relative
from .._scenario import Scenario
from ._channel import make_pipe, read_events
from ._contract import BOOTSTRAP, CONFIG_ENV
from ._sandbox import Sandbox, sandbox_for

# Time the child gets to write its stacks after SIGUSR1, and to load the app.
_DUMP_GRACE_S = 1.0
_LOAD_TIMEOUT_S = 120.0
# After the child is gone, time for the reader to drain what it wrote: a grandchild that
# forked off with a copy of the channel keeps it open, so its end is no sign of death.
_EXIT_GRACE_S = 1.0
# A child killed with SIGKILL is reaped at once, unless the kernel holds it (D state).
_REAP_TIMEOUT_S = 10.0
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class AuditError(Exception):
    """The audit could not start (bad app, bad settings): one line for the user."""


class AuditInternalError(Exception):
    """geventcheck's own code failed in the audited process: one line, exit code 3."""


@dataclass
class TaskRecord:
    """Everything the child said about one task, before it is judged."""

    name: str
    queue: str | None
    required: tuple[str, ...] = ()
    has_inputs: bool = False
    findings: list[Finding] = field(default_factory=list)
    solo_runs: list[dict[str, Any]] = field(default_factory=list)
    concurrent_wall_ms: float | None = None
    concurrent_runs: list[dict[str, Any]] = field(default_factory=list)
    started: bool = False
    finished: bool = False
    # wall-clock (Unix) time of the task's first and last run, to match the services' log
    window: tuple[float, float] | None = None
    service_calls: dict[str, int] = field(default_factory=dict)
    processes: list[dict[str, Any]] = field(default_factory=list)  # see _model.Process
    # task messages one run published ("proj.add → celery"), the most any run did
    published: dict[str, int] = field(default_factory=dict)
    retries: int = 0  # runs that ended in self.retry()

    def add_run(self, event: dict[str, Any]) -> None:
        """What the child said about one run beyond its timings."""
        for key, count in (event.get("published") or {}).items():
            self.published[key] = max(self.published.get(key, 0), int(count))
        if event.get("retry") is not None:
            self.retries += 1

    @property
    def runnable(self) -> bool:
        """Has what it needs to run: no required arguments, or inputs from the scenario."""
        return not self.required or self.has_inputs


@dataclass
class AuditRun:
    environment: Environment
    tasks: list[TaskRecord]
    notes: list[str]


def count_service_calls(records: list[TaskRecord], log: list[dict[str, Any]]) -> None:
    """Attribute each request, message or connection to the task running when it came."""
    arrivals = [e for e in log if e.get("event") != "close"]  # a proxied connection's end
    for rec in records:
        if rec.window is None:
            continue
        start, end = rec.window
        for entry in arrivals:
            if start <= entry.get("time", 0.0) <= end:
                name = entry.get("service", "?")
                rec.service_calls[name] = rec.service_calls.get(name, 0) + 1


@dataclass
class Callbacks:
    on_tasks: Callable[[list[TaskRecord]], None] = lambda tasks: None
    on_task_start: Callable[[TaskRecord], None] = lambda task: None
    on_task_done: Callable[[TaskRecord], None] = lambda task: None


_FAULT_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')


def _last_location(lines: list[str]) -> tuple[str | None, int | None, str | None]:
    """The innermost frame of the thread that crashed, from a faulthandler dump."""
    for line in lines:
        match = _FAULT_FRAME.search(line)
        if match and is_audited_file(match["file"]):
            return relative(match["file"]), int(match["line"]), match["func"]
    return None, None, None


class _Child:
    """One child process and the thread that reads its channel."""

    def __init__(self, cfg: dict[str, Any], workdir: str, log: Any, cwd: str | None,
                 env: dict[str, str], *,
                 spawn: Callable[..., Any] = subprocess.Popen) -> None:
        read_fd, write_fd = make_pipe()
        self.log_start = log.tell()  # the log holds every child's output: this one's starts here
        self.crashlog = os.path.join(workdir, f"crash-{time.monotonic_ns()}.log")
        cfg = {**cfg, "fd": write_fd, "crashlog": self.crashlog}
        env = {**os.environ, **env, CONFIG_ENV: _json_dumps(cfg),
               "PYTHONUNBUFFERED": "1"}
        self.proc = spawn(
            [sys.executable, "-c", BOOTSTRAP], env=env, pass_fds=(write_fd,),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd=cwd,
        )
        os.close(write_fd)
        self.log_path: str | None = getattr(log, "name", None)
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(read_fd,), daemon=True)
        self._reader.start()

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as stream:
            for event in read_events(stream):
                self.events.put(event)
        self.events.put(None)

    def dump_stacks(self) -> list[str]:
        """Ask faulthandler (which needs no GIL) for every thread's stack."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGUSR1)
        time.sleep(_DUMP_GRACE_S)
        return self.read_crashlog()

    def mark_output(self) -> None:
        """A task starts: only what the child writes from now on is that task's output."""
        try:
            self._output_from = os.path.getsize(self.log_path) if self.log_path else 0
        except OSError:
            self._output_from = 0

    def log_tail(self, lines: int = 20) -> list[str]:
        """The last lines the child wrote to its stdout and stderr since the task started."""
        if not self.log_path:
            return []
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(getattr(self, "_output_from", 0))
                text = fh.read().decode(errors="replace")
        except OSError:
            return []
        return [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]

    def main_thread_activity(self) -> str | None:
        """``running`` when the child's main thread is on a CPU, else the syscall number it
        sits in (read from /proc, no help from the child needed)."""
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/syscall") as fh:
                return fh.read().split()[0]
        except (OSError, IndexError):
            return None

    def read_crashlog(self) -> list[str]:
        try:
            with open(self.crashlog, errors="replace") as fh:
                return [line.rstrip() for line in fh if line.strip()]
        except OSError:
            return []

    def gone(self) -> bool:
        return self.proc.poll() is not None

    def reap(self) -> None:
        """Wait for a child whose channel closed; kill it if it lives on (it closed the fd)."""
        try:
            self.proc.wait(timeout=_EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> bool:
        """Kill the child's whole process group; False if it could not be reaped."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=_REAP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return False
        return True


def _json_dumps(data: Any) -> str:
    import json

    return json.dumps(data)


def _environment(event: dict[str, Any]) -> Environment:
    return Environment(
        python=event["python"], gevent=event["gevent"], patched=event["patched"],
        celery=event.get("celery"), django=event.get("django"),
        drivers=tuple(Driver(**d) for d in event.get("drivers", [])),
        imported_before_patch=tuple(event.get("imported_before_patch", [])),
    )


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "did not exit when killed"
    if returncode < 0:
        try:
            return f"was killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


class Auditor:
    """Drives child processes until every selected task has a record."""

    def __init__(self, app: str, settings: Settings, *, django_settings: str | None = None,
                 globs: tuple[str, ...] = (), callbacks: Callbacks | None = None,
                 workdir: str | None = None, scenario: Scenario | None = None,
                 env: dict[str, str] | None = None,
                 django_overrides: dict[str, Any] | None = None,
                 host_map: dict[str, tuple[str, int]] | None = None,
                 services: list[tuple[str, int]] | None = None) -> None:
        self.app = app
        self.workdir = workdir
        self.scenario = scenario
        self.env = env or {}
        self.settings = settings
        self.callbacks = callbacks or Callbacks()
        self.cfg: dict[str, Any] = {
            "app": app, "django_settings": django_settings, "globs": list(globs),
            "warn_ms": settings.warn_ms, "threshold_ms": settings.threshold_ms,
            "concurrency": settings.concurrency, "runs": settings.runs,
            "task_timeout": settings.task_timeout_s, "shims": list(settings.shims), "skip": [],
            "calls": scenario.calls_as_json() if scenario else {},
            "explore": settings.explore, "explore_seed": settings.explore_seed,
            "shuffle": settings.shuffle, "sandbox": None, "shard": settings.shard,
            "paths": list(scenario.paths) if scenario else [],
            "settings": django_overrides or {},
            "host_map": {host: list(target) for host, target in (host_map or {}).items()},
            "allow": [list(a) for a in scenario.allow] if scenario else [],
            "allow_publish": settings.allow_publish,
            "services": [list(s) for s in services or []],
        }
        self.records: dict[str, TaskRecord] = {}
        self.sandbox: Sandbox | None = None
        self.environment: Environment | None = None
        self.notes: list[str] = []

    def run(self) -> AuditRun:
        with tempfile.TemporaryDirectory(prefix="geventcheck-") as workdir, \
                sandbox_for(self.cfg, workdir, enabled=self.settings.sandbox) as sandbox:
            log_path = os.path.join(workdir, "child.log")
            with open(log_path, "ab") as log:
                while True:
                    self.sandbox = sandbox
                    if sandbox is not None:
                        sandbox.open_declarations()
                    child = _Child({**self.cfg, "skip": self._handled()}, workdir, log,
                                   cwd=self.workdir, env=self.env,
                                   spawn=sandbox.popen if sandbox else subprocess.Popen)
                    try:
                        complete = self._supervise(child, log_path)
                    finally:
                        if not child.kill():
                            self.notes.append(f"the audit process {child.proc.pid} did not die "
                                              f"within {_REAP_TIMEOUT_S:g} s of SIGKILL")
                    if complete:
                        break
        assert self.environment is not None
        return AuditRun(self.environment, list(self.records.values()), self.notes)

    def _handled(self) -> list[str]:
        return [name for name, rec in self.records.items() if rec.started]

    def _supervise(self, child: _Child, log_path: str) -> bool:  # noqa: PLR0911
        """Follow one child; True when the audit is complete, False to start another."""
        timeout = self.settings.task_timeout_s
        current: TaskRecord | None = None
        last_beat = last_progress = time.monotonic()
        gone_at: float | None = None
        exit_stack: list[str] = []
        loaded = self.environment is not None and bool(self.records)
        ran_a_task = False  # a child that dies before its first task would die again
        listed = False  # this child has loaded the app and listed its tasks
        # Outside a task, the child runs only worker_init receivers and its own bookkeeping:
        # they get as long as a task that makes no progress.
        stuck_after = timeout * 2 + 10
        while True:
            try:
                event = child.events.get(timeout=0.2)
            except queue.Empty:
                event = {"event": "tick"}
                if child.gone():
                    gone_at = gone_at or time.monotonic()
                    if time.monotonic() - gone_at > _EXIT_GRACE_S:
                        event = None  # dead, though a forked grandchild holds the channel
            now = time.monotonic()
            if event is None:  # the channel closed or the child is gone
                child.reap()
                if not loaded:
                    raise AuditError(self._load_failure(child, log_path))
                if current is None:
                    if not self._remaining():
                        return True
                    if not ran_a_task:
                        raise self._startup_failure(child, log_path, exit_stack)
                    how = _describe_exit(child.proc.returncode)
                    self.notes.append(f"the audit process {how} between tasks; restarted it")
                    return False
                self._crash(current, child, exit_stack)
                return False
            kind = event["event"]
            if kind != "tick":
                last_beat = now
            if kind == "load-error":
                raise AuditError(event["message"])
            if kind == "environment" and self.environment is None:
                self.environment = _environment(event)
            elif kind == "tasks":
                last_progress, listed = now, True
                if not loaded:
                    self._check_scenario(event.get("all_tasks", []))
                    self._register(event["tasks"])
                    loaded = True
            elif kind == "task-start":
                ran_a_task = True
                if self.sandbox is not None:
                    self.sandbox.close_declarations()  # no task may open a bridge
                current = self.records[event["task"]]
                current.started = True
                at = event.get("t", time.time())
                current.window = (at, at)
                last_progress = now
                exit_stack = []
                child.mark_output()
                self.callbacks.on_task_start(current)
            elif kind == "run" and current is not None:
                current.add_run(event)
            elif kind == "phase" and current is not None:
                last_progress = now
                self._phase(current, event)
            elif kind == "task-done" and current is not None:
                if current.window is not None:
                    current.window = (current.window[0], event.get("t", time.time()))
                current.finished = True
                self.callbacks.on_task_done(current)
                current = None
                last_progress = now
            elif kind == "drivers" and self.environment is not None:
                self._add_drivers(event["drivers"])
            elif kind == "exit":
                exit_stack = event.get("stack", [])
            elif kind == "note":
                self.notes.append(event["message"])
            elif kind == "deadlock" and current is not None:
                self._deadlock(current, event)
                return False
            elif kind == "done":
                return True
            if current is not None:
                silent = now - last_beat
                if silent > timeout + 5:
                    self._unresponsive(current, child, silent)
                    return False
                if now - last_progress > stuck_after:
                    self._stuck(current, child, now - last_progress)
                    return False
            elif not listed:
                if now - last_beat > _LOAD_TIMEOUT_S:
                    raise AuditError(f"the app {self.app!r} did not finish loading within "
                                     f"{_LOAD_TIMEOUT_S:g} s")
            elif now - last_progress > stuck_after:
                # Heartbeats may still come (the monitor is a thread): progress is what counts.
                if not ran_a_task:
                    raise AuditError(
                        f"the app's start-up did not finish within {stuck_after:g} s (twice "
                        f"--task-timeout, plus 10) after loading {self.app!r}: a celeryd_init "
                        "or worker_init receiver (or what it calls) never returns, so a real "
                        "worker would not start either")
                self.notes.append(f"the audit process made no progress for {stuck_after:g} s "
                                  "between tasks; restarted it")
                return False

    def _add_drivers(self, drivers: list[dict[str, Any]]) -> None:
        """Drivers a child found loaded at its end; a blocking verdict sticks."""
        assert self.environment is not None
        known = {d.name: d for d in self.environment.drivers}
        for raw in drivers:
            driver = Driver(**raw)
            if driver.name not in known or known[driver.name].status != "blocking":
                known[driver.name] = driver
        self.environment = dataclasses.replace(
            self.environment, drivers=tuple(sorted(known.values(), key=lambda d: d.name)))

    def _remaining(self) -> bool:
        return any(not r.started and r.runnable for r in self.records.values())

    def _check_scenario(self, known: list[str]) -> None:
        if self.scenario is None:
            return
        for name in self.scenario.calls:
            if name not in known:
                raise AuditError(str(self.scenario.unknown_task_error(name, known)))

    def _register(self, tasks: list[dict[str, Any]]) -> None:
        for t in tasks:
            self.records[t["name"]] = TaskRecord(t["name"], t["queue"], tuple(t["required"]),
                                                 has_inputs=t["name"] in self.cfg["calls"])
        self.callbacks.on_tasks(list(self.records.values()))

    def _phase(self, rec: TaskRecord, event: dict[str, Any]) -> None:
        rec.findings.extend(Finding.from_dict(f) for f in event["findings"])
        rec.processes.extend(event.get("processes", []))
        if event["phase"] == "solo":
            rec.solo_runs.extend(event.get("runs", []))
        elif event["phase"] == "concurrent":
            rec.concurrent_wall_ms = event.get("wall_ms")
            rec.concurrent_runs.extend(event.get("runs", []))

    def _finish_abnormally(self, rec: TaskRecord, finding: Finding) -> None:
        if rec.window is not None:
            rec.window = (rec.window[0], time.time())
        rec.findings.append(finding)
        rec.finished = True
        self.callbacks.on_task_done(rec)

    def _deadlock(self, rec: TaskRecord, event: dict[str, Any]) -> None:
        if event.get("spinning"):
            self._spun_out(rec, event["age_s"],
                           (event.get("file"), event.get("line"), event.get("function")),
                           list(event.get("stacks", [])))
            return
        wait = event.get("syscall")
        blamed = " ".join(x for x in (event.get("callee"), f"({wait})" if wait else None) if x)
        file = event.get("file")
        self._finish_abnormally(rec, Finding(
            "deadlock", "error",
            f"the hub did not run for {event['age_s']:.0f} s"
            + (f": the worker thread sits in {blamed}" if blamed else "")
            + "; every task in a gevent worker would hang. A native lock held across a "
            "cooperative wait does this",
            file=relative(file) if file else None, line=event.get("line"),
            function=event.get("function"), native=blamed or None,
            endpoint=event.get("endpoint"), stack=tuple(event.get("stacks", [])),
            duration_ms=event["age_s"] * 1000,
            fix="use gevent.lock / gevent.queue (or no lock) instead of threading or "
                "multiprocessing primitives shared between greenlets"))

    def _spun_out(self, rec: TaskRecord, age: float, where: tuple[Any, Any, Any],
                  stack: list[str], *, native: bool = False) -> None:
        """CPU work that never ended is not a deadlock: nothing waits, it computes."""
        file, line, func = where
        self._finish_abnormally(rec, Finding(
            "cpu-bound", "error",
            f"ran on the CPU for {age:.0f} s without yielding to the hub and had not finished "
            + ("(in native code that kept the GIL) " if native else "")
            + "when the audit stopped it (--task-timeout): every task in a gevent worker "
            "would hang behind it", file=relative(file) if file else None, line=line,
            function=func, stack=tuple(stack), duration_ms=age * 1000,
            fix="route this task to a prefork queue, and check the loop that never ends"))

    def _unresponsive(self, rec: TaskRecord, child: _Child, silent: float) -> None:
        activity = child.main_thread_activity()
        stack = child.dump_stacks()
        file, line, func = _last_location(stack)
        if activity == "running":
            self._spun_out(rec, silent, (file, line, func), stack, native=True)
            return
        self._finish_abnormally(rec, Finding(
            "deadlock", "error",
            f"the audit process stopped answering for {silent:.0f} s: the hub and even the "
            "monitor thread were blocked (native code holding the GIL)",
            file=file, line=line, function=func, stack=tuple(stack),
            duration_ms=silent * 1000,
            fix="find the native call in the stack; run it in gevent.get_hub().threadpool or "
                "route this task to a prefork queue"))

    def _stuck(self, rec: TaskRecord, child: _Child, age: float) -> None:
        stack = child.dump_stacks()
        file, line, func = _last_location(stack)
        self._finish_abnormally(rec, Finding(
            "timeout", "error", f"made no progress for {age:.0f} s and could not be stopped",
            file=file, line=line, function=func, stack=tuple(stack), duration_ms=age * 1000,
            fix="give every network call a timeout"))

    def _crash(self, rec: TaskRecord, child: _Child, exit_stack: list[str]) -> None:
        how = _describe_exit(child.proc.returncode)
        stack = exit_stack or child.read_crashlog()
        tail = child.log_tail()
        output = f'; its last output: "{tail[-1][:200]}"' if tail else ""
        if exit_stack:
            file, line, func = _location_in_traceback(exit_stack)
            how += " (os._exit)"
        else:
            file, line, func = _last_location(stack)
        if not exit_stack and _crashed_in_geventcheck(stack):
            self._finish_abnormally(rec, Finding(
                "crash", "warning",
                f"geventcheck itself failed: the audit process {how} in geventcheck's own "
                f"code while this task ran, so the task was not certified{output}. Please "
                "report this as a geventcheck bug, with this stack",
                stack=tuple([*stack, "-- output --", *tail]), cause="geventcheck",
                fix="audit this task again; the stack above belongs in a bug report"))
            return
        self._finish_abnormally(rec, Finding(
            "crash", "error",
            f"the worker process {how} while running this task; on a gevent worker every "
            f"task running beside it dies too{output}",
            file=file, line=line, function=func, stack=tuple([*stack, "-- output --", *tail]),
            fix="never call os._exit or sys.exit in a task; a native crash needs the "
                "library fixed or the task moved to a prefork queue"))

    def _load_failure(self, child: _Child, log_path: str) -> str:
        tail = _log_lines(log_path, child.log_start)
        detail = tail[-1] if tail else ""
        return (f"the audit process {_describe_exit(child.proc.returncode)} while loading "
                f"{self.app!r}" + (f": {detail}" if detail else ""))

    def _startup_failure(self, child: _Child, log_path: str,
                         exit_stack: list[str]) -> Exception:
        """A child that loaded the app but died before its first task: restarting it would
        only loop. The app's start-up (its worker_init receivers...) is exit 2; a traceback
        that ends in geventcheck's own code is ours (exit 3)."""
        how = _describe_exit(child.proc.returncode)
        log = _log_lines(log_path, child.log_start)
        frames = [m for m in map(_TB_FRAME.search, log) if m]
        innermost = frames[-1]["file"] if frames else None
        ours_at = (f"{os.path.relpath(innermost, os.path.dirname(_PACKAGE_DIR))}:"
                   f"{frames[-1]['line']}" if innermost else "")
        detail = log[-1] if frames and log and not _TB_FRAME.search(log[-1]) else ""
        if exit_stack:
            file, line, _ = _location_in_traceback(exit_stack)
        else:
            file, line, _ = _last_location(child.read_crashlog())
            if file is None and frames:
                file, line, _ = _location_in_traceback(log)
        at = f" at {file}:{line}" if file else ""
        if innermost and _is_ours(innermost) and file is None:
            return AuditInternalError(
                f"the audit process {how} after loading {self.app!r}, before its first task, "
                f"in geventcheck's own code ({ours_at}"
                + (f": {detail}" if detail else "") + "); please report it")
        return AuditError(
            f"the app's start-up ended the audit process before its first task: it {how}{at}"
            + (f" ({detail})" if detail else "")
            + "; a celeryd_init or worker_init receiver (or what it calls) ends the process, "
            "so a real worker would not start either")


def _log_lines(path: str, start: int = 0) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            text = fh.read().decode(errors="replace")
            return [line.strip() for line in text.splitlines() if line.strip()]
    except OSError:
        return []


def _is_ours(path: str) -> bool:
    return os.path.abspath(path).startswith(_PACKAGE_DIR + os.sep)


def _crashed_in_geventcheck(dump: list[str]) -> bool:
    """The thread that faulted (faulthandler's "Current thread") was in geventcheck's own
    code: its innermost frame outside the standard library is ours."""
    from .._paths import caller_is_own
    from ..detectors._stacks import parse_current

    frames = parse_current("\n".join(dump))
    return bool(frames) and caller_is_own(frames)


_TB_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')


def _location_in_traceback(lines: list[str]) -> tuple[str | None, int | None, str | None]:
    """The innermost app frame of a ``traceback.format_stack`` listing (outermost first)."""
    found: tuple[str | None, int | None, str | None] = (None, None, None)
    for line in lines:
        match = _TB_FRAME.search(line)
        if match and is_audited_file(match["file"]):
            found = (relative(match["file"]), int(match["line"]), match["func"])
    return found
