"""``audit --mode worker``: the tasks sent as messages to a real ``celery worker -P gevent``
judge as the in-process audit judges them (native code that keeps the GIL included), with
the embedded broker, Redis and RabbitMQ; a worker that dies or hangs is a finding, and
nothing is left running or queued."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import geventcheck

from .conftest import APPS, SCHEMA, AuditResult, processes_with, require_service, run_audit

FAST = ("-A", "workerapp", "--runs", "2", "-c", "2", "--task-timeout", "5", "--explore", "0")
REDIS_URL = "redis://127.0.0.1:6379/7"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
QUEUE_PREFIX = "geventcheck.audit."
JUDGED_ALIKE = ("native_block", "cpu_burn", "gil_held_native_wait", "gil_held_native_cpu",
                "cooperative")
OWN_CODE = Path(geventcheck.__file__).parent
# marks the processes this test session starts: the machine may run other sessions' audits
SESSION = {"GEVENTCHECK_TEST_SESSION": uuid.uuid4().hex}
MARK = "GEVENTCHECK_TEST_SESSION={GEVENTCHECK_TEST_SESSION}".format(**SESSION).encode()


def judged(report: dict[str, Any] | None) -> dict[str, tuple[Any, ...]]:
    assert report is not None
    return {t["name"].rsplit(".", 1)[1]: (
        t["verdict"], t["recommended_pool"],
        sorted({f["kind"] for f in t["findings"] if f["severity"] == "error"}))
        for t in report["tasks"]}


def our_workers() -> list[str]:
    """Worker processes this session's audits started that still run, by their command
    line and this session's mark in their environment (other test sessions on the machine
    audit the same app at the same time)."""
    return processes_with("geventcheck._workerprobe", "workerapp", env_mark=MARK)


def audit_watching_queues(*args: str, tmp_path: Path) -> tuple[AuditResult, set[str]]:
    """The audit, and the private queues its workers consumed (their `-Q`), seen while
    it ran: the broker holds other sessions' audit queues too."""
    queues: set[str] = set()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_audit, *args, tmp_path=tmp_path, env=SESSION)
        while not running.done():
            for line in our_workers():
                words = line.split()
                if "-Q" in words:
                    queues.add(words[words.index("-Q") + 1])
            time.sleep(0.1)
        return running.result(), queues


@pytest.fixture(scope="module")
def inprocess(tmp_path_factory: pytest.TempPathFactory) -> AuditResult:
    return run_audit(*FAST, tmp_path=tmp_path_factory.mktemp("inprocess"), env=SESSION)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> AuditResult:
    return run_audit(*FAST, "--mode", "worker", tmp_path=tmp_path_factory.mktemp("embedded"),
                     env=SESSION)


def _left_in(service: str, queues: set[str]) -> list[str]:
    """These queues (and their Redis keys) still on the broker."""
    if service == "redis":
        cmd = ["redis-cli", "-u", REDIS_URL, "--scan", "--pattern", f"*{QUEUE_PREFIX}*"]
    else:
        cmd = ["rabbitmqctl", "-q", "list_queues", "name"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    return [line for line in done.stdout.split() if any(q in line for q in queues)]


def test_the_embedded_worker_judges_as_the_in_process_audit(inprocess: AuditResult,
                                                            embedded: AuditResult) -> None:
    assert embedded.returncode == inprocess.returncode == 1, embedded.stderr
    worker, local = judged(embedded.report), judged(inprocess.report)
    for name in JUDGED_ALIKE:
        assert worker[name] == local[name], (name, worker[name], local[name])
    assert worker["native_block"] == ("no-go", "prefork", ["blocking-call"])
    assert worker["cpu_burn"] == ("no-go", "prefork", ["cpu-bound"])
    # native code that keeps the GIL: no watcher can look during it, yet a wait is still
    # a wait and a computation still CPU work
    assert worker["gil_held_native_wait"] == ("no-go", "prefork", ["blocking-call"])
    assert worker["gil_held_native_cpu"] == ("no-go", "prefork", ["cpu-bound"])
    assert worker["cooperative"] == ("go", "gevent", [])
    assert embedded.report is not None
    assert embedded.report["settings"]["mode"] == "worker"
    assert embedded.report["environment"]["patched"] is True
    jsonschema.validate(embedded.report, json.loads(SCHEMA.read_text()))


def _line_of(marker: str) -> int:
    lines = (APPS / "workerapp" / "tasks.py").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if marker in line)


def _blamed_on_geventcheck(report: dict[str, Any] | None) -> list[str]:
    assert report is not None
    return [f"{t['name']}: {f['message']}" for t in report["tasks"] for f in t["findings"]
            if f["file"] and Path(f["file"]).resolve().is_relative_to(OWN_CODE)]


def test_gil_holding_native_code_is_blamed_on_the_tasks_line_never_on_geventcheck(
        embedded: AuditResult) -> None:
    """The worker reads the stack the moment such a call gives the GIL back: it shows the
    task's line, not the probe code that ran after the task (once blamed on the probe's
    own `_emit`, as geventcheck's package counted as the app's code)."""
    assert embedded.report is not None
    assert not _blamed_on_geventcheck(embedded.report)
    tasks = {t["name"].rsplit(".", 1)[1]: t for t in embedded.report["tasks"]}
    for name, marker in (("gil_held_native_wait", "a wait in C that keeps the GIL"),
                         ("gil_held_native_cpu", "C computation that keeps the GIL")):
        errors = [f for f in tasks[name]["findings"] if f["severity"] == "error"]
        assert all("kept the GIL" in f["message"] for f in errors), errors
        assert ("workerapp/tasks.py", _line_of(marker)) in {
            (f["file"], f["line"]) for f in errors}, errors


def test_the_worker_counts_the_apps_folders_not_geventcheck_as_its_code() -> None:
    from celery import Celery

    from geventcheck._workerprobe import COLLECT_TASK, _collect, app_roots

    app = Celery("rootsapp", set_as_current=False)
    app.task(name=COLLECT_TASK)(_collect)  # as the probe adds it to every app it joins
    app.task(name="rootsapp.judged")(judged)  # a task of the app's, in this folder
    assert app_roots(app) == (str(Path(__file__).resolve().parent) + os.sep,)


def test_the_probe_writes_a_runs_measures_only_once_the_tasks_greenlet_has_ended(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write (and a schedstat read) inside the task's greenlet lets go of the GIL: on a
    busy machine the monitor looked there and called a GIL-holding task's stall
    geventcheck's own work, not judged."""
    from types import SimpleNamespace

    import gevent

    from geventcheck import _workerprobe as probe

    out = tmp_path / "worker.jsonl"
    monkeypatch.setenv(probe.OUT_ENV, str(out))
    monkeypatch.setattr(probe, "_STATE", {"monitor": None, "runs": {}, "hub": gevent.get_hub()})
    task = SimpleNamespace(name="workerapp.tasks.cooperative")

    def one_run() -> bool:
        probe._prerun(task_id="t1", task=task)
        probe._postrun(task_id="t1", task=task, state="SUCCESS", retval="ok")
        return out.exists()

    assert gevent.spawn(one_run).get() is False  # nothing written while the task's run lasted
    [line] = out.read_text().splitlines()
    run = json.loads(line)
    assert (run["event"], run["id"], run["state"], run["error"]) == ("run", "t1", "SUCCESS", None)
    assert run["wall_ms"] >= 0 and run["queued_ms"] == 0.0


def test_the_embedded_broker_never_hands_the_worker_a_half_written_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kombu's filesystem transport creates a message's file, then writes it: a worker
    polling in between took the empty file and died decoding it. Here the worker polls
    while each message is being serialized, the moment kombu's file stood empty."""
    from queue import Empty

    from kombu import Connection, Producer
    from kombu.transport import filesystem

    from geventcheck._doctorlive import private_queue
    from geventcheck._workermode import _broker, _sender
    from geventcheck._workerprobe import filesystem_options

    broker = _broker(None, str(tmp_path))
    assert broker.folder is not None
    _, audit = _sender(broker)
    queue = private_queue(f"{QUEUE_PREFIX}whole", 60)
    worker = Connection("filesystem://", transport_options=filesystem_options(broker.folder))
    polled: list[Any] = []
    serialize = filesystem.dumps

    def serialize_while_the_worker_polls(obj: Any) -> str:
        try:
            polled.append(worker.default_channel._get(queue.name))
        except Empty:
            polled.append(None)
        return str(serialize(obj))

    monkeypatch.setattr(filesystem, "dumps", serialize_while_the_worker_polls)
    with audit, worker:
        Producer(audit).publish({"n": 1}, routing_key=queue.name, exchange=queue.exchange,
                                declare=[queue])
        assert polled and all(seen is None for seen in polled)  # nothing, or all of it
        channel = worker.default_channel
        assert channel.message_to_python(channel._get(queue.name)).decode() == {"n": 1}


def test_a_worker_that_dies_or_hangs_is_a_finding_and_the_audit_goes_on(
        inprocess: AuditResult, embedded: AuditResult) -> None:
    worker, local = judged(embedded.report), judged(inprocess.report)
    assert worker["exits_worker"] == ("no-go", "prefork", ["crash"])
    assert worker["waits_forever"] == ("no-go", "prefork", ["timeout"])
    assert local["exits_worker"][0] == local["waits_forever"][0] == "no-go"
    assert "the worker was restarted after workerapp.tasks.exits_worker" in embedded.stderr
    assert not our_workers()
    # the embedded broker keeps everything in the audit's temporary folder
    assert not list((APPS / "control").glob(f"{QUEUE_PREFIX}*"))


@pytest.mark.parametrize("service", [
    pytest.param("redis", marks=pytest.mark.service("redis")),
    pytest.param("rabbitmq", marks=pytest.mark.service("rabbitmq")),
])
def test_a_worker_on_a_real_broker_judges_the_same_and_leaves_nothing_queued(
        inprocess: AuditResult, tmp_path: Path, service: str) -> None:
    require_service(service)
    url = REDIS_URL if service == "redis" else RABBITMQ_URL
    result, queues = audit_watching_queues(*FAST, "--mode", "worker", "--broker", url,
                                           tmp_path=tmp_path)
    assert result.returncode == 1, result.stderr
    assert judged(result.report) == {
        name: verdict for name, verdict in judged(inprocess.report).items()
        if name not in ("exits_worker", "waits_forever")} | {
        "exits_worker": ("no-go", "prefork", ["crash"]),
        "waits_forever": ("no-go", "prefork", ["timeout"])}
    assert not _blamed_on_geventcheck(result.report)
    assert not our_workers()
    assert queues and all(q.startswith(QUEUE_PREFIX) for q in queues), queues
    assert not _left_in(service, queues)


@pytest.mark.parametrize(("args", "message"), [
    (("--broker", REDIS_URL), "--broker needs --mode worker"),
    (("--mode", "worker", "--shard", "1/2"), "--mode worker does not support --shard yet"),
    (("--mode", "worker", "--broker", "redis://127.0.0.1:1/0"),
     "--broker: cannot reach redis://127.0.0.1:1/0: Error 111 connecting to 127.0.0.1:1. "
     "Connection refused."),
])
def test_worker_mode_usage_errors_are_one_line(args: tuple[str, ...], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "geventcheck", "audit", *FAST, *args],
                          cwd=APPS, capture_output=True, text=True, timeout=120,
                          env=os.environ | SESSION)
    assert done.returncode == 2
    assert done.stderr == f"geventcheck: error: {message}\n"
    assert not our_workers()


def test_an_app_the_worker_cannot_load_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "geventcheck", "audit", "-A", "nosuchapp",
                           "--mode", "worker"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=os.environ | SESSION)
    assert done.returncode == 2
    assert done.stderr.startswith("geventcheck: error: --mode worker: the worker exited")
    assert "nosuchapp" in done.stderr and done.stderr.count("\n") == 1


def test_a_killed_audit_leaves_no_worker_running(tmp_path: Path) -> None:
    """SIGKILL runs no `finally`: the worker must still go with the audit (CI timeouts)."""
    import signal
    import time

    audit = subprocess.Popen(
        [sys.executable, "-m", "geventcheck", "audit", "-A", "workerapp", "--mode", "worker",
         "--task", "*waits_forever", "--task-timeout", "120"],
        cwd=APPS, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # a SIGKILLed audit cannot delete its temporary folder: keep it in the test's own
        env=os.environ | SESSION | {"TMPDIR": str(tmp_path)})
    try:
        deadline = time.monotonic() + 120
        def started() -> bool:  # Celery's own entry point is running, not the launcher
            return any(" -m celery " in line for line in our_workers())

        while not started() and time.monotonic() < deadline and audit.poll() is None:
            time.sleep(0.2)
        assert started(), "the worker never started"
        audit.send_signal(signal.SIGKILL)
        audit.wait(30)
        deadline = time.monotonic() + 60
        while our_workers() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not our_workers()
    finally:
        if audit.poll() is None:
            audit.kill()
            audit.wait(30)
        for line in our_workers():  # the test's own clean-up, should the assertion fail
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
