"""The audited process: patched first, then the app, then each task under the detectors.

Started by the parent with a bootstrap that calls ``gevent.monkey.patch_all()``
before anything else is imported. It streams events on its private channel;
it never decides verdicts (the parent does).
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import gevent
import greenlet
from gevent.monkey import is_module_patched
from gevent.pool import Pool

from .. import _version
from .._model import Finding, finding_to_dict
from .._paths import app_frame, is_audited_file, relative
from ..detectors import PROBES, ProbeRun, _children, _drivers, _egress, _hub, _stalls
from ..detectors._divergence import first_divergence
from . import _appload, _execute, _isolation
from ._channel import ChildChannel
from ._contract import CONFIG_ENV
from ._outbox import Outbox

# Solo runs added when an error-level stall showed up in one measured run only.
_CONFIRM_RUNS = 2
_FAILED = object()
_REAL_EXIT = os._exit

# Modules whose import before patching changes how the app behaves under gevent.
MATTERS_BEFORE_PATCH = (
    "ssl", "threading", "socket", "select", "selectors", "queue", "subprocess",
    "django.db", "psycopg", "psycopg2", "MySQLdb", "pymysql", "redis", "requests",
    "urllib3", "grpc", "cassandra", "celery", "kombu",
)


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0], "gevent": gevent.__version__}
    for name in ("celery", "django"):
        mod = sys.modules.get(name)
        out[name] = getattr(mod, "__version__", None) if mod else None
    return out


class TaskRunner:
    """Runs one task's warm-up, solo and concurrent phases under the hub monitor."""

    def __init__(self, app: Any, cfg: dict[str, Any], chan: ChildChannel,
                 monitor: _hub.HubMonitor, roots: tuple[str, ...], *,
                 guard: _egress.EgressGuard, executor: _execute.Executor) -> None:
        self.app = app
        self.executor = executor
        self.cfg = cfg
        self.chan = chan
        self.monitor = monitor
        self.roots = roots
        self.guard = guard
        self.probes = [make() for make in PROBES]

    def _blocking_drivers(self) -> frozenset[str]:
        """Asked after every phase: tasks often import their driver on first use."""
        return frozenset(
            d.name for d in _drivers.inventory(self.cfg["concurrency"]) if d.status == "blocking"
        )

    def _locate(self, exc: BaseException, outcome: dict[str, Any]) -> None:
        """Where in the app's own code the exception came from."""
        tb = traceback.extract_tb(exc.__traceback__)
        frames = [f for f in tb if is_audited_file(f.filename, self.roots)]
        if frames:
            outcome["file"] = relative(frames[-1].filename)
            outcome["line"], outcome["function"] = frames[-1].lineno, frames[-1].name

    def _invoke(self, task: Any, outcome: dict[str, Any], call: dict[str, Any]) -> None:
        """One run as a gevent worker runs a message: Celery's tracer, a worker-like request."""
        outcome["call"] = call.get("index")
        wall0, cpu0, queued0 = time.perf_counter(), time.thread_time(), self.monitor.queued_ms()
        held0 = self.monitor.held_s
        try:
            run = self.executor.run(task, call["args"], call["kwargs"])
        except SystemExit as exc:
            outcome["system_exit"] = exc.code
            outcome["stack"] = traceback.format_tb(exc.__traceback__)
            self._locate(exc, outcome)
            return
        finally:
            outcome["wall_ms"] = (time.perf_counter() - wall0) * 1000
            outcome["cpu_ms"] = (time.thread_time() - cpu0) * 1000
            outcome["queued_ms"] = self.monitor.queued_ms() - queued0
            outcome["overhead_ms"] = (self.monitor.held_s - held0) * 1000
        outcome["state"], outcome["published"] = run.state, run.published
        if run.retry is not None:
            outcome["retry"] = run.retry
        if run.failed:
            outcome["error"] = run.error_text
            outcome["traceback"] = run.traceback_tail()
            if run.error is not None:
                self._locate(run.error, outcome)
        else:
            outcome["result"] = _summary(run.value)
        self.chan.send("run", task=task.name, **{
            k: outcome[k] for k in ("state", "published", "retry", "error") if k in outcome})

    def _phase(self, task: Any, phase: str, calls: list[dict[str, Any]],
               on_spawn: Callable[[Any, int], None] | None = None,
               ) -> tuple[list[dict[str, Any]], bool]:
        """Run one greenlet per call at once; returns their outcomes and whether all finished."""
        self.monitor.phase = phase
        outcomes: list[dict[str, Any]] = [{} for _ in calls]
        pool = Pool(len(calls))
        glets = []
        for index, (outcome, call) in enumerate(zip(outcomes, calls, strict=True)):
            glet = pool.greenlet_class(self._invoke, task, outcome, call)
            if on_spawn is not None:
                on_spawn(glet, index)
            pool.start(glet)
            glets.append(glet)
        done = gevent.joinall(glets, timeout=self.cfg["task_timeout"])
        finished = len(done) == len(glets)
        if not finished:
            stacks: list[str] = []
            for glet in glets:
                if not glet.dead and glet.gr_frame is not None:
                    stacks.extend(line.rstrip() for line in traceback.format_stack(glet.gr_frame))
            self._send_findings(task.name, phase, [Finding(
                "timeout", "error",
                f"still running after {self.cfg['task_timeout']:g} s ({phase} run) while the "
                "hub kept running: it waits on something that never answers",
                stack=tuple(stacks), phase=phase,
                fix="give every network call a timeout; check what the stack waits on")])
            pool.kill(block=True, timeout=2)
        return outcomes, finished

    def _send_findings(self, name: str, phase: str, findings: list[Finding],
                       **extra: Any) -> None:
        self.chan.send("phase", task=name, phase=phase,
                       findings=[finding_to_dict(f) for f in findings], **extra)

    def _outcome_findings(self, outcomes: list[dict[str, Any]], phase: str) -> list[Finding]:
        out = []
        for outcome in outcomes:
            if "system_exit" in outcome:
                out.append(Finding(
                    "crash", "error",
                    f"raised SystemExit({outcome['system_exit']!r}): on a gevent "
                    "worker this stops the whole worker and every task running in it",
                    stack=tuple(line.rstrip() for line in outcome.get("stack", ())),
                    file=outcome.get("file"), line=outcome.get("line"),
                    function=outcome.get("function"), phase=phase,
                    fix="raise an exception instead of calling sys.exit()"))
            elif "error" in outcome:
                out.append(Finding(
                    "task-error", "warning", f"raised {outcome['error']}",
                    file=outcome.get("file"), line=outcome.get("line"),
                    function=outcome.get("function"), phase=phase,
                    stack=tuple(outcome.get("traceback", ()))))
        return out

    def run(self, info: _appload.TaskInfo, calls: list[dict[str, Any]]) -> None:
        """Warm-up with the first call, solo runs and concurrent copies taking turns, then
        confirmation runs for any error-level stall that only one run showed."""
        task = self.app.tasks[info.name]
        cfg = self.cfg

        def turn(i: int) -> dict[str, Any]:
            return {**calls[i % len(calls)], "index": i % len(calls)}

        plan = [("warm-up", [turn(0)])]
        plan += [("solo", [turn(i)]) for i in range(cfg["runs"])]
        plan += [("concurrent", [turn(i) for i in range(cfg["concurrency"])])]
        solo: list[dict[str, Any]] = []
        concurrent: list[dict[str, Any]] = []
        seen_in: dict[tuple[object, ...], set[int]] = {}
        run = 0
        while plan:
            phase, phase_calls = plan.pop(0)
            outcomes, finished = self._measured_phase(info, task, phase, phase_calls, run=run,
                                                      seen_in=seen_in)
            run += 1
            if not finished:
                return
            if phase == "solo":
                solo.extend(outcomes)
            if phase == "concurrent":
                concurrent = outcomes
                # An error-level stall seen in one run only: look again before judging it.
                if any(len(runs) == 1 for runs in seen_in.values()):
                    plan += [("solo", [turn(i)]) for i in range(_CONFIRM_RUNS)]
        copies = [turn(i) for i in range(cfg["concurrency"])]
        # Before the probe run, so state the extra runs leave behind is caught by its probes.
        explored = [] if first_divergence(solo, concurrent) else self._explore(task, copies, solo)
        self._probe(info, task, copies, solo, explored)

    def _measured_phase(self, info: _appload.TaskInfo, task: Any, phase: str,
                        calls: list[dict[str, Any]], *, run: int,
                        seen_in: dict[tuple[object, ...], set[int]],
                        ) -> tuple[list[dict[str, Any]], bool]:
        cfg = self.cfg
        # the audit's own garbage is collected here, not inside the task's run
        self.monitor.settle()
        started = time.perf_counter()
        outcomes, finished = self._phase(task, phase, calls)
        wall_ms = (time.perf_counter() - started) * 1000
        stalls = self.monitor.take_stalls()
        self.monitor.phase = "idle"
        findings = _stalls.stall_findings(
            stalls, threshold_s=cfg["threshold_ms"] / 1000, warn_s=cfg["warn_ms"] / 1000,
            app_roots=self.roots, blocking_drivers=self._blocking_drivers(), run=run)
        for f in findings:
            if f.severity == "error" and f.cause is None and phase != "warm-up":
                seen_in.setdefault(_stalls.merge_key(f), set()).add(run)
        findings += self._outcome_findings(outcomes, phase)
        findings += _egress_findings(self.guard.take_attempts(), phase)
        self._send_findings(
            info.name, phase, _stalls.merge(findings), wall_ms=wall_ms, run=run,
            runs=[{k: o.get(k) for k in ("wall_ms", "cpu_ms", "queued_ms", "overhead_ms", "error")}
                  for o in outcomes],
        )
        return outcomes, finished

    def _guarded(self, probe: Any, step: str, *args: Any) -> Any:
        """A probe that fails must cost its own findings, not the audit."""
        try:
            return getattr(probe, step)(*args)
        except Exception as exc:
            self.chan.send("note", message=f"the {type(probe).__module__} probe failed in "
                                           f"{step}(): {exc!r}; its findings are missing")
            return _FAILED

    def _probe(self, info: _appload.TaskInfo, task: Any, calls: list[dict[str, Any]],
               solo: list[dict[str, Any]], explored: list[Finding]) -> None:
        """One more concurrent run with every probe on; its timings are not judged."""
        if not self.probes:
            if explored:
                self._send_findings(info.name, "explore", explored)
            return
        run = ProbeRun(info.name, task, self.app, self.roots, len(calls), solo_outcomes=solo)
        started = [p for p in self.probes if self._guarded(p, "begin", run) is not _FAILED]
        outcomes, _ = self._phase(task, "probe", calls,
                                  on_spawn=lambda glet, _: run.greenlets.add(glet))
        self.monitor.take_stalls()  # measured runs judge stalls; the probes slow this one
        self.monitor.phase = "idle"
        findings: list[Finding] = list(explored)
        for probe in reversed(started):
            found = self._guarded(probe, "end", run, outcomes)
            findings += [] if found is _FAILED else found
        findings += _egress_findings(self.guard.take_attempts(), "probe")
        self._send_findings(info.name, "probe", _stalls.merge(findings))

    def _explore(self, task: Any, calls: list[dict[str, Any]],
                 solo: list[dict[str, Any]]) -> list[Finding]:
        """Search interleavings for one where the copies disagree (--explore)."""
        examples, seed = self.cfg.get("explore", 0), self.cfg.get("explore_seed", 0)
        if not examples or not solo:
            return []
        try:
            from ..detectors import _explore
        except ImportError:
            return []

        def run_copies(copy_of: dict[Any, int]) -> list[dict[str, Any]]:
            outcomes, _ = self._phase(task, "explore", calls,
                                      on_spawn=copy_of.__setitem__)
            return outcomes

        try:
            found = _explore.explore(run_copies, solo, len(calls), examples=examples, seed=seed)
        finally:
            self.monitor.take_stalls()
            self.monitor.phase = "idle"
        if found is None:
            return []
        schedule, copy, alone = found
        return [_explore.exploration_finding(len(calls), schedule, copy, alone, seed)]


def _summary(value: Any) -> Any:
    """A JSON-able stand-in for a task's return value, to compare runs with."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_summary(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _summary(v) for k, v in value.items()}
    return repr(value)


def _egress_guard(cfg: dict[str, Any]) -> _egress.EgressGuard:
    """Only loopback, the scenario's services and configured endpoints are reachable."""
    allowed = [(host, port) for host, port in cfg.get("allow", [])]
    host_map: dict[str, list[Any]] = cfg.get("host_map", {})
    guard = _egress.EgressGuard(
        allowed=allowed, allowed_hosts=[host for host, _ in allowed],
        host_map={name: target[0] for name, target in host_map.items()},
        port_map={name: target[1] for name, target in host_map.items()},
    )
    guard.activate()
    return guard


def _guard_children(cfg: dict[str, Any], guard: _egress.EgressGuard,
                    roots: tuple[str, ...]) -> _children.ChildProcesses:
    """Name every process a task starts, and hand the egress guard to Python children."""
    report = os.path.join(os.path.dirname(cfg["crashlog"]), f"child-egress-{os.getpid()}.jsonl")
    children = _children.ChildProcesses(roots, guard_report=report)
    os.environ.update(_children.child_guard_env(
        sorted(guard.allowed, key=repr), guard.host_map, guard.port_map, report))
    children.install()
    return children


def _egress_findings(attempts: list[_egress.EgressAttempt], phase: str) -> list[Finding]:
    return [Finding(
        "egress", "error",
        f"tried to reach {a.endpoint} ({a.kind}), which is neither loopback nor a service of "
        "the scenario: refused before anything was sent",
        file=relative(a.file) if a.file else None, line=a.line, function=a.function,
        endpoint=a.endpoint, stack=a.stack, phase=phase,
        fix="fake it in the scenario ([[services.http]] with hosts = [...]), or list it "
            "under allow = [...] if the audit may really reach it")
        for a in attempts]


def _install_exit_reporter(chan: ChildChannel) -> None:
    """os._exit skips every handler: tell the parent where it was called first."""
    def reporting_exit(code: int) -> None:
        chan.send("exit", code=code, stack=[line.rstrip() for line in traceback.format_stack()])
        _REAL_EXIT(code)

    os._exit = reporting_exit  # type: ignore[assignment]


def _apply_shims(names: list[str], concurrency: int) -> None:
    from .. import patches

    patches.apply_all(names, concurrency=concurrency)


def main(before_patch: frozenset[str]) -> None:
    cfg = json.loads(os.environ.pop(CONFIG_ENV))
    chan = ChildChannel(cfg["fd"])
    crashlog = open(cfg["crashlog"], "w")  # noqa: SIM115 - kept open for faulthandler
    faulthandler.enable(file=crashlog, all_threads=True)
    faulthandler.register(signal.SIGUSR1, file=crashlog, all_threads=True)
    _install_exit_reporter(chan)
    guard = _egress_guard(cfg)  # on before the app is imported: imports may connect too
    sys.path[:0] = [p for p in cfg.get("paths", []) if p not in sys.path]
    try:
        _apply_shims(cfg["shims"], cfg["concurrency"])
        app = _appload.load_app(cfg["app"], cfg.get("django_settings"))
        _appload.override_django_settings(cfg.get("settings") or {})
    except (_appload.AppLoadError, ImportError) as exc:
        chan.send("load-error", message=str(exc))
        _REAL_EXIT(2)
    for host, port in _appload.configured_endpoints(app):
        guard.allowed.add((host.lower(), port))
        guard.allowed_hosts.add(host.lower())
    if cfg.get("sandbox"):  # bridges into the namespace, asked for before any task runs
        from ._sandbox import declare

        guard.host_map.update(declare(cfg["sandbox"], _appload.configured_endpoints(app)))
    for attempt in guard.take_attempts():
        chan.send("note", message=f"loading the app tried to reach {attempt.endpoint} "
                                  f"({attempt.kind}) at {attempt.file}:{attempt.line}: refused")
    from ..detectors._backend import per_greenlet_backend  # the app's, said once: not a task's

    if backend_note := per_greenlet_backend(app):
        chan.send("note", message=backend_note)
    tasks = _isolation.ordered(_appload.list_tasks(app, tuple(cfg["globs"])), cfg.get("shuffle"))
    if cfg.get("shard"):  # audit --shard I/N: the other machines audit the rest
        from .._shard import parse as parse_shard

        shard = parse_shard(cfg["shard"])
        tasks = [t for t in tasks if shard.owns(t.name)]
    imported_before = sorted(m for m in MATTERS_BEFORE_PATCH if m in before_patch)
    chan.send(
        "environment", **_versions(), patched=bool(is_module_patched("socket")),
        drivers=[dataclasses.asdict(d) for d in _drivers.inventory(cfg["concurrency"])],
        imported_before_patch=imported_before,
    )
    chan.send("tasks", tasks=[
        {"name": t.name, "queue": t.queue, "required": list(t.required)} for t in tasks
    ], all_tasks=sorted(name for name in app.tasks if not name.startswith("celery.")))
    outbox = Outbox(app, allow_publish=bool(cfg.get("allow_publish")))
    outbox.install()  # before worker_init: its receivers may publish or connect too
    try:
        worker = _execute.start_worker(app, cfg["concurrency"])
    except Exception as exc:
        chan.send("note", message=f"starting the worker raised {exc!r} (a celeryd_init or "
                                  "worker_init receiver?)")
        from celery.utils.nodenames import gethostname

        worker = _execute.AuditWorker(app, f"geventcheck@{gethostname()}", cfg["concurrency"])
    executor = _execute.Executor(app, worker, outbox)

    roots = _appload.app_roots(app)
    children = _guard_children(cfg, guard, roots)

    def on_deadlock(age: float, evidence: _hub.Evidence, spinning: bool) -> None:
        stack = evidence.stack
        top = app_frame(stack, roots)
        last = evidence.samples[-1].syscall if evidence.samples else None
        callee = None
        if top is not None:
            with contextlib.suppress(Exception):
                callee = _stalls.callee_of(stack, top)
        chan.send("deadlock", age_s=age, syscall=evidence.syscall, spinning=spinning,
                  callee=callee,
                  endpoint=evidence.peers.get(last.fd) if last and last.fd is not None else None,
                  file=top.file if top else None,
                  line=top.line if top else None, function=top.function if top else None,
                  stacks=_hub.all_stacks())

    monitor = _hub.HubMonitor(
        cfg["warn_ms"] / 1000, deadlock_s=cfg["task_timeout"],
        on_deadlock=on_deadlock, on_heartbeat=lambda: chan.send("heartbeat"),
        on_note=lambda message: chan.send("note", message=message),
        is_app_file=lambda path: is_audited_file(path, roots),
    )
    monitor.start()
    monitor.ignore(greenlet.getcurrent())
    runner = TaskRunner(app, cfg, chan, monitor, roots, guard=guard, executor=executor)
    isolation = _isolation.TaskIsolation(roots)
    skip = set(cfg["skip"])
    inputs: dict[str, list[dict[str, Any]]] = cfg.get("calls") or {}
    for info in tasks:
        if info.name in skip or (info.needs_args and info.name not in inputs):
            continue
        chan.send("task-start", task=info.name, t=time.time())
        children.install()  # again: the task before may have replaced a wrapped function
        runner.run(info, inputs.get(info.name) or [{"args": [], "kwargs": {}}])
        processes, refused = children.take()
        chan.send("phase", task=info.name, phase="isolation", processes=processes,
                  findings=[finding_to_dict(f) for f in refused + isolation.after_task()])
        chan.send("task-done", task=info.name, t=time.time())
    monitor.stop()
    # Drivers imported by the tasks themselves are loaded only now.
    chan.send("drivers", drivers=[dataclasses.asdict(d)
                                  for d in _drivers.inventory(cfg["concurrency"])])
    chan.send("done", version=_version.__version__)
    sys.stdout.flush()
    _REAL_EXIT(0)
