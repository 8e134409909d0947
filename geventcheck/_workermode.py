"""``audit --mode worker``: each task sent as messages to a real ``celery worker -P gevent``.

The worker is started through Celery's own entry point (``python -m celery``), so it is
patched exactly as in production; ``geventcheck._workerprobe`` joins it with ``-I`` and
runs the hub monitor as a bootstep. The worker consumes one private queue only. Without
``--broker`` the broker is kombu's filesystem transport in a temporary folder: no server.
The parent owns the watchdog: a worker that dies or stops answering becomes a finding on
the task it was running, and a new worker takes the next task. The worker is killed and
the queue deleted in every case.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any

from . import _version
from ._audit import AuditPlan
from ._jsonlines import Reader, last_lines
from ._judge import judge
from ._model import Environment, Finding, Report
from .runner._parent import AuditError, TaskRecord

QUEUE_PREFIX = "geventcheck.audit."
_READY_TIMEOUT_S = 60.0
_KILL_WAIT_S = 5.0


# Runs `python -m celery ARGS` in this very process (exec), after asking Linux for SIGKILL
# when the audit dies unannounced (a CI job killed): no worker outlives the audit even when
# no `finally` runs. Celery's entry point then sees the same argv as in production.
_LAUNCH = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)  # the audit is already gone\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'celery', *sys.argv[2:]])\n"
)


class _WorkerGone(Exception):
    """The worker died or stopped answering; the message says how."""

    def __init__(self, crashed: bool, message: str) -> None:
        super().__init__(message)
        self.crashed = crashed


@dataclass
class _Broker:
    url: str
    folder: str | None  # the filesystem transport's folder, or None for a real broker


class _Worker:
    """One `celery worker -P gevent` process with the probe, and its output file."""

    def __init__(self, plan: AuditPlan, broker: _Broker, queue_name: str, *, ttl: float,
                 tmp: str, index: int) -> None:
        from ._doctorlive import dropped_environment
        from ._workerprobe import CONFIG_ENV, OUT_ENV

        self.out_path = os.path.join(tmp, f"worker-{index}.jsonl")
        self.log_path = os.path.join(tmp, f"worker-{index}.log")
        self._out = Reader(self.out_path)
        self.pending: list[dict[str, Any]] = []
        cfg = {"queue": queue_name, "ttl": ttl, "filesystem": broker.folder,
               "warn_ms": plan.settings.warn_ms, "globs": list(plan.globs)}
        env = {k: v for k, v in os.environ.items() if k not in dropped_environment()}
        env |= {OUT_ENV: self.out_path, CONFIG_ENV: json.dumps(cfg),
                "PYTHONPATH": os.pathsep.join([os.path.abspath(plan.workdir or os.getcwd()),
                                               os.environ.get("PYTHONPATH", "")])}
        if plan.django_settings:
            env["DJANGO_SETTINGS_MODULE"] = plan.django_settings
        args = [sys.executable, "-c", _LAUNCH, str(os.getpid()),
                "-A", plan.app, "-b", broker.url, "worker",
                "-P", "gevent", "-c", str(plan.settings.concurrency),
                "-I", "geventcheck._workerprobe", "-Q", queue_name,
                "-n", f"geventcheck-{uuid.uuid4().hex[:8]}@%h", "--without-heartbeat",
                "--without-mingle", "--without-gossip", "-l", "warning"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, cwd=plan.workdir or None, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def events(self) -> list[dict[str, Any]]:
        """Lines the probe wrote since the last call (a torn last line waits)."""
        return self._out.read()

    def wait_for(self, match: Any, timeout: float, what: str) -> dict[str, Any]:
        """The first event ``match`` accepts; _WorkerGone when the worker dies or the
        deadline passes first."""
        deadline = time.monotonic() + timeout
        while True:
            self.pending += self.events()
            for index, event in enumerate(self.pending):
                if match(event):
                    return self.pending.pop(index)
            code = self.proc.poll()
            if code is not None:
                how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
                raise _WorkerGone(True, f"the worker {how} {what}")
            if time.monotonic() > deadline:
                raise _WorkerGone(False, f"the worker stopped answering {what} (nothing "
                                             f"within {timeout:g} s)")
            time.sleep(0.05)

    def log_tail(self, lines: int = 8) -> list[str]:
        return last_lines(self.log_path, lines)

    def kill(self) -> None:
        """SIGTERM to the worker's process group, SIGKILL when it does not go."""
        if self.proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(_KILL_WAIT_S)
                return
            except subprocess.TimeoutExpired:
                continue


def _broker(url: str | None, tmp: str) -> _Broker:
    if url:
        return _Broker(url, None)
    from ._workerprobe import filesystem_options

    folder = os.path.join(tmp, "broker")
    os.mkdir(folder)
    os.mkdir(filesystem_options(folder)["processed_folder"])
    return _Broker("filesystem://", folder)


def _whole_message_transport() -> type:
    """kombu's filesystem transport, except that a message appears in the folder whole.

    kombu creates a message's file under its final name and writes it afterwards; a
    worker that polls in between takes the empty file and dies decoding it (seen on a
    busy machine). Here the message is written under a name no queue matches, then
    renamed: a rename is atomic, so the worker sees all of it or nothing.
    """
    from kombu.exceptions import ChannelError
    from kombu.transport import filesystem

    class Channel(filesystem.Channel):
        # spelled as kombu's filesystem Channel spells it, not as its base class
        def _put(self, queue: Any, payload: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            text: str = filesystem.dumps(payload)  # type: ignore[attr-defined,no-untyped-call]
            folder = self.data_folder_out
            name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
            fd, partial = tempfile.mkstemp(prefix=".", suffix=".part", dir=folder)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(text.encode())
                os.replace(partial, os.path.join(folder, name))
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(partial)
                raise ChannelError(f"Cannot add {name!r} to {folder}") from exc

    class Transport(filesystem.Transport):
        pass

    Transport.Channel = Channel
    return Transport


def _sender(broker: _Broker) -> tuple[Any, Any]:
    """A bare Celery app that only publishes (the app itself is never imported here), and
    its connection to the broker."""
    from celery import Celery

    sender = Celery("geventcheck-worker-mode", broker=broker.url, set_as_current=False)
    if broker.folder is None:
        return sender, sender.connection_for_write()
    from kombu.connection import Connection

    from ._workerprobe import filesystem_options

    return sender, Connection(  # type: ignore[no-untyped-call]
        transport=_whole_message_transport(),
        transport_options=filesystem_options(broker.folder))


class _Session:
    """Sends phases of runs to the current worker and collects what it measured."""

    def __init__(self, plan: AuditPlan, broker: _Broker, tmp: str) -> None:
        from ._doctorlive import private_queue

        self.plan = plan
        self.broker = broker
        self.tmp = tmp
        self.ttl = plan.settings.task_timeout_s * 4 + 600
        self.queue_name = f"{QUEUE_PREFIX}{uuid.uuid4().hex}"
        self.queue = private_queue(self.queue_name, self.ttl)
        self.sender, self.connection = _sender(broker)
        self.worker: _Worker | None = None
        self.started = 0
        self.ready: dict[str, Any] = {}
        self.phase_count = 0

    def check_broker(self) -> None:
        """Reach the broker before starting anything: AuditError (one line) when it cannot.
        Then declare the private queue: the worker finds it whole (the filesystem
        transport's exchange table is a file a reader could otherwise catch half written)."""
        try:
            self.connection.ensure_connection(max_retries=1)
        except Exception as exc:
            raise AuditError(f"--broker: cannot reach {self.broker.url}: {exc}") from None
        self.queue(self.connection.default_channel).declare()

    def start_worker(self) -> None:
        self.started += 1
        self.worker = _Worker(self.plan, self.broker, self.queue_name, ttl=self.ttl,
                              tmp=self.tmp, index=self.started)
        try:
            self.ready = self.worker.wait_for(lambda e: e["event"] == "ready",
                                              _READY_TIMEOUT_S, "starting")
        except _WorkerGone as exc:
            tail = " | ".join(line for line in self.worker.log_tail(4) if line.strip())
            self.stop_worker()
            raise AuditError(f"--mode worker: {exc}: {tail}") from None
        self._collect("start", -1, "warm-up")

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.kill()
            self.worker = None

    def discard_queued(self) -> None:
        """Drop the runs a dead worker never took: they are not the next task's to meet.
        Declared first: RabbitMQ deletes the auto-delete queue with its last consumer."""
        bound = self.queue(self.connection.default_channel)
        bound.declare()
        bound.purge()

    def _send(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> str:
        task_id = str(uuid.uuid4())
        self.sender.send_task(name, args=args, kwargs=kwargs, task_id=task_id,
                              queue=self.queue, exchange=self.queue.exchange,
                              routing_key=self.queue_name, declare=[self.queue],
                              expires=self.ttl, ignore_result=True,
                              connection=self.connection)
        return task_id

    def _collect(self, phase_id: str, run: int, next_phase: str) -> list[Finding]:
        from ._workerprobe import COLLECT_TASK

        assert self.worker is not None
        settings = self.plan.settings
        self._send(COLLECT_TASK, [phase_id, run, settings.threshold_ms, settings.warn_ms,
                                  next_phase], {})
        event = self.worker.wait_for(
            lambda e: e["event"] == "collected" and e["phase_id"] == phase_id,
            settings.task_timeout_s, "after this task's runs")
        return [Finding.from_dict(f) for f in event["findings"]]

    def phase(self, name: str, calls: list[dict[str, Any]], run: int,
              next_phase: str) -> tuple[list[dict[str, Any]], float, list[Finding]]:
        """Send the calls at once, wait for each to end, then collect the phase's stalls."""
        assert self.worker is not None
        started = time.perf_counter()
        ids = {self._send(name, list(c.get("args") or []), dict(c.get("kwargs") or {}))
               for c in calls}
        runs = []
        deadline = self.plan.settings.task_timeout_s
        while ids:
            event = self.worker.wait_for(lambda e: e["event"] == "run" and e["id"] in ids,
                                         deadline, "while it ran this task")
            ids.discard(event["id"])
            runs.append(event)
        wall_ms = (time.perf_counter() - started) * 1000
        self.phase_count += 1
        return runs, wall_ms, self._collect(f"p{self.phase_count}", run, next_phase)

    def close(self) -> list[str]:
        """Kill the worker and delete the private queue; notes on what could not be."""
        from ._doctorlive import clean_up

        self.stop_worker()
        notes = []
        try:
            with self.connection:
                clean_up(self.connection, self.queue)
        except Exception as exc:
            notes.append(f"the private queue {self.queue_name} was not deleted ({exc}); the "
                         f"broker drops it after {self.ttl:g} s unused")
        return notes


def _audit_task(session: _Session, rec: TaskRecord, calls: list[dict[str, Any]]) -> None:
    settings = session.plan.settings

    def turn(i: int) -> dict[str, Any]:
        return calls[i % len(calls)]

    plan = [("warm-up", [turn(0)])]
    plan += [("solo", [turn(i)]) for i in range(settings.runs)]
    plan += [("concurrent", [turn(i) for i in range(settings.concurrency)])]
    rec.started = True
    for run, (phase, phase_calls) in enumerate(plan):
        next_phase = plan[run + 1][0] if run + 1 < len(plan) else "warm-up"
        runs, wall_ms, findings = session.phase(rec.name, phase_calls, run, next_phase)
        rec.findings.extend(findings)
        for event in runs:
            if event.get("error"):
                rec.findings.append(Finding("task-error", "warning",
                                            f"raised {event['error']}", phase=phase))
        measured = [{k: e.get(k) for k in ("wall_ms", "cpu_ms", "queued_ms", "overhead_ms",
                                            "error")} for e in runs]
        if phase == "solo":
            rec.solo_runs.extend(measured)
        elif phase == "concurrent":
            rec.concurrent_runs = measured
            rec.concurrent_wall_ms = wall_ms
    rec.finished = True


def check_plan(plan: AuditPlan) -> AuditPlan:
    """The plan with mode "worker"; UsageError for what this mode does not do yet."""
    import dataclasses

    import click

    settings = plan.settings
    unsupported = [flag for flag, on in (
        ("--with-shims", bool(plan.with_shims)), ("--sandbox", settings.sandbox),
        ("--shim", bool(settings.shims)), ("--shard", settings.shard is not None),
        ("--shuffle", settings.shuffle is not None), ("--allow-publish", settings.allow_publish),
        ("a scenario with services", bool(plan.scenario and plan.scenario.services)),
    ) if on]
    if unsupported:
        raise click.UsageError(f"--mode worker does not support {', '.join(unsupported)} yet")
    return dataclasses.replace(plan, settings=dataclasses.replace(settings, mode="worker",
                                                                  explore=0))


def run_worker_audit(plan: AuditPlan, broker_url: str | None) -> tuple[Report, list[str]]:
    """The report of an audit through real gevent workers; raises AuditError when no worker
    starts."""
    calls: dict[str, list[dict[str, Any]]] = (plan.scenario.calls_as_json()
                                              if plan.scenario else {})
    notes: list[str] = []
    records: list[TaskRecord] = []
    ready: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="geventcheck-worker-") as tmp:
        session = _Session(plan, _broker(broker_url, tmp), tmp)
        try:
            session.check_broker()
            session.start_worker()
            ready = session.ready
            records = [TaskRecord(t["name"], t["queue"], tuple(t["required"]),
                                  has_inputs=t["name"] in calls) for t in ready["tasks"]]
            for rec in records:
                if not rec.runnable:
                    continue
                if session.worker is None:
                    session.start_worker()
                try:
                    _audit_task(session, rec, calls.get(rec.name) or [{}])
                except _WorkerGone as exc:
                    log = session.worker.log_tail() if session.worker else []
                    message = f"{exc}: a real gevent worker would stop serving every task " \
                              "with it"
                    fix = "see the worker's log lines; a blocking or crashing call takes the " \
                          "worker down"
                    rec.findings.append(
                        Finding("crash", "error", message, stack=tuple(log), fix=fix)
                        if exc.crashed else
                        Finding("timeout", "error", message, stack=tuple(log), fix=fix))
                    rec.finished = True
                    session.stop_worker()
                    session.discard_queued()
                    notes.append(f"the worker was restarted after {rec.name}")
        finally:
            notes += session.close()
    environment = Environment(python=ready["python"], gevent=ready["gevent"],
                              celery=ready["celery"], patched=bool(ready["patched"]))
    if not ready["patched"]:
        notes.append(f"the worker ({ready['pool']}) was not monkey-patched: its verdicts do "
                     "not describe a gevent worker")
    settings = plan.settings
    report = Report(
        tool_version=_version.__version__,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        app=plan.app, settings=settings, environment=environment,
        tasks=tuple(judge(rec, settings.warn_ms, {}, threshold_ms=settings.threshold_ms)
                    for rec in records))
    return report, notes
