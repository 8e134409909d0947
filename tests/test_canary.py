"""The canary in real ``celery worker -P gevent`` processes on Redis: one switched on by
``GEVENTCHECK_CANARY=1``, one by its one line in the app. Their Prometheus endpoints are
scraped while they run, and ``geventcheck report --from redis://`` adds both up into the
usual report once they have stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import APPS, SCHEMA, require_service

REDIS_DB = "redis://127.0.0.1:6379/9"
TASKS = ("native_block", "cpu_burn", "holds_gil", "cooperative", "counts_sent")
COPIES = 3  # of each task, per worker

pytestmark = pytest.mark.service("redis")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    queue: str
    port: int
    log: Path

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples if s.name.startswith("geventcheck_")}


def start_worker(tmp: Path, name: str, deployment: str, *, via_env: bool) -> Worker:
    queue = f"geventcheck.canarytest.{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {**os.environ, "CANARYAPP_BROKER": REDIS_DB, "CANARYAPP_QUEUE": queue,
           "GEVENTCHECK_CANARY_PORT": str(port), "GEVENTCHECK_CANARY_REDIS": REDIS_DB,
           "GEVENTCHECK_CANARY_DEPLOYMENT": deployment, "GEVENTCHECK_CANARY_FLUSH_S": "0.2",
           "PYTHONPATH": str(APPS)}
    env.pop("GEVENTCHECK_CANARY", None)
    env["GEVENTCHECK_CANARY" if via_env else "CANARYAPP_ONE_LINE"] = "1"
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "canaryapp", "worker", "-P", "gevent",
             "-c", "20", "-n", f"{name}@%h", "-Q", queue, "--without-heartbeat",
             "--without-gossip", "--without-mingle", "-l", "info"],
            cwd=APPS, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Worker(proc, queue, port, log)


def wait_for(what: str, check: Any, workers: list[Worker], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except OSError:
            found = None
        if found:
            return found
        for w in workers:
            assert w.proc.poll() is None, f"worker died:\n{w.log.read_text()[-3000:]}"
        time.sleep(0.2)
    logs = "\n".join(w.log.read_text()[-2000:] for w in workers)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def finished(worker: Worker) -> bool:
    metrics = worker.metrics()
    done = sum(v for (name, _), v in metrics.items() if name == "geventcheck_tasks_total")
    return done >= COPIES * len(TASKS)


@dataclass
class Fleet:
    deployment: str
    workers: list[Worker]
    scraped: list[dict[tuple[str, tuple[tuple[str, str], ...]], float]]
    report: dict[str, Any]
    returncode: int
    stderr: str
    markdown: str


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_service("redis")
    import redis

    tmp = tmp_path_factory.mktemp("canary")
    deployment = f"test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(REDIS_DB)
    workers = [start_worker(tmp, "env", deployment, via_env=True),
               start_worker(tmp, "oneline", deployment, via_env=False)]
    try:
        for w in workers:
            wait_for("the canary's metrics endpoint", w.metrics, workers)
        sys.path.insert(0, str(APPS))
        try:
            from canaryapp.celery import app
        finally:
            sys.path.remove(str(APPS))
        with app.connection_for_write(REDIS_DB) as conn:
            for w in workers:
                for _ in range(COPIES):
                    for name in TASKS:
                        app.send_task(f"canaryapp.tasks.{name}", queue=w.queue,
                                      connection=conn)
        for w in workers:
            wait_for("every task to finish", lambda w=w: finished(w), workers)
        time.sleep(0.5)  # the flush greenlet digests every 0.2 s
        scraped = [w.metrics() for w in workers]
        for w in workers:  # a warm shutdown pushes the last summary
            w.proc.send_signal(signal.SIGTERM)
        for w in workers:
            w.proc.wait(timeout=30)
        out = tmp / "report.json"
        markdown = tmp / "plan.md"
        done = subprocess.run(
            [sys.executable, "-m", "geventcheck", "report", "--from",
             f"{REDIS_DB}?deployment={deployment}", "--json", str(out),
             "--markdown", str(markdown)],
            capture_output=True, text=True, timeout=60)
        yield Fleet(deployment, workers, scraped,
                    json.loads(out.read_text()) if out.exists() else {},
                    done.returncode, done.stderr,
                    markdown.read_text() if markdown.exists() else "")
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
        client.delete(f"geventcheck:canary:{deployment}",
                      *(w.queue for w in workers))
        client.close()


def test_both_ways_of_switching_it_on_serve_metrics_from_a_real_worker(fleet: Fleet) -> None:
    for metrics in fleet.scraped:
        def value(name: str, **labels: str) -> float:
            return metrics.get((name, tuple(sorted(labels.items()))), 0.0)

        for name in TASKS:
            assert value("geventcheck_tasks_total", task=f"canaryapp.tasks.{name}",
                         outcome="ok") == COPIES
        assert value("geventcheck_tasks_in_flight") == 0
        stalls = {dict(labels)["task"]: v for (name, labels), v in metrics.items()
                  if name == "geventcheck_hub_stall_seconds_count"}
        assert stalls.get("canaryapp.tasks.native_block", 0) >= COPIES
        assert stalls.get("canaryapp.tasks.holds_gil", 0) >= COPIES
        assert "canaryapp.tasks.cooperative" not in stalls
        events = [(dict(labels), v) for (name, labels), v in metrics.items()
                  if name == "geventcheck_blocking_events_total"]
        blocked = [(labels, v) for labels, v in events
                   if labels["task"] == "canaryapp.tasks.native_block"]
        # every call blocked the hub once; on a busy machine the sampler may miss the line
        assert sum(v for _, v in blocked) == COPIES
        assert {labels["kind"] for labels, _ in blocked} == {"blocking-call"}
        assert any(labels["where"] == "canaryapp/tasks.py:17" and "usleep" in labels["call"]
                   for labels, _ in blocked)
        burned = [labels for labels, _ in events if labels["task"] == "canaryapp.tasks.cpu_burn"]
        assert burned and {labels["kind"] for labels in burned} == {"cpu-bound"}
        assert not [labels for labels, _ in events
                    if labels["task"] == "canaryapp.tasks.cooperative"]


def test_each_blocking_event_is_a_structured_log_line(fleet: Fleet) -> None:
    for w in fleet.workers:
        events = [json.loads(line[line.index("{"):]) for line in w.log.read_text().splitlines()
                  if '"event":"geventcheck.hub-stall"' in line]
        blocked = [e for e in events if e["task"] == "canaryapp.tasks.native_block"]
        assert len(blocked) == COPIES
        assert all(e["kind"] == "blocking-call" and e["ms"] >= 100 for e in blocked)
        assert any(e["where"] == "canaryapp/tasks.py:17" and "usleep" in e["call"]
                   for e in blocked)


def test_report_from_redis_adds_up_both_workers_into_the_usual_report(fleet: Fleet) -> None:
    assert fleet.returncode == 1, fleet.stderr  # no-go tasks, as an audit exits
    report = fleet.report
    jsonschema.validate(report, json.loads(SCHEMA.read_text()))
    assert sorted(w.split(":")[0] for w in report["canary"]["workers"]) == [
        "env@" + socket.gethostname(), "oneline@" + socket.gethostname()]
    tasks = {t["name"].rsplit(".", 1)[1]: t for t in report["tasks"]}
    assert {name: t["stats"]["runs"] for name, t in tasks.items()} == {
        name: 2 * COPIES for name in TASKS}

    def errors(name: str) -> list[dict[str, Any]]:
        return [f for f in tasks[name]["findings"] if f["severity"] == "error"]

    assert tasks["native_block"]["verdict"] == "no-go"
    blocked = errors("native_block")
    assert {f["kind"] for f in blocked} == {"blocking-call"}
    assert sum(f["count"] for f in blocked) == 2 * COPIES  # each call once: not merged
    [block] = [f for f in blocked if f["line"] == 17]  # ones no look saw have no line
    assert "usleep" in block["native"] and 100 <= block["duration_ms"] < 200
    assert tasks["cpu_burn"]["verdict"] == "no-go"
    assert {f["kind"] for f in errors("cpu_burn")} == {"cpu-bound"}
    # a Python loop is not "native code that kept the GIL"
    assert all("ran on the CPU" in f["message"] for f in errors("cpu_burn"))
    assert tasks["holds_gil"]["verdict"] == "no-go"
    assert {f["kind"] for f in errors("holds_gil")} == {"blocking-call"}
    assert all("kept the GIL" in f["message"] for f in errors("holds_gil"))
    assert tasks["cooperative"]["verdict"] == "go"
    assert tasks["counts_sent"]["verdict"] == "go"
    [shared] = [f for f in tasks["counts_sent"]["findings"] if f["kind"] == "global-state"]
    assert "canaryapp.tasks.COUNTER" in shared["message"] and shared["line"] == 45
    assert "| queue" in fleet.markdown or "queue" in fleet.markdown.lower()
    assert "canaryapp.tasks.native_block" in fleet.markdown


def test_report_from_says_what_is_wrong_in_one_line(fleet: Fleet) -> None:
    def report(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "geventcheck", "report", *args],
                              capture_output=True, text=True, timeout=60)

    missing = report("--from", REDIS_DB, "--deployment", "no-such-deployment")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == (
        f"geventcheck: error: --from: no canary summaries in {REDIS_DB} for deployment "
        "'no-such-deployment'")
    refused = report("--from", "redis://127.0.0.1:1/0", "--deployment", "x")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "cannot read redis://127.0.0.1:1/0" in refused.stderr
    both = report("--merge", "--from", REDIS_DB)
    assert both.returncode == 2 and "--merge and --from do not go together" in both.stderr
