"""Tasks run as ``celery worker -P gevent`` runs them, and nothing they publish leaves.

The app (tests/apps/execapp) uses Celery's canvas, ``self.replace``, ``self.retry``,
shared tasks, stamping and hooks on a real Redis broker and backend. Each audit gets a
private queue, so the test can look into that queue afterwards; the last test runs the
same tasks on a real gevent worker and compares.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import APPS, AuditResult, require_service, run_audit

DB = "9"
URL = f"redis://127.0.0.1:6379/{DB}"
# Execution, not stalls, is under test: a busy machine's noise must not turn a verdict.
FAST = ("--runs", "1", "-c", "2", "--explore", "0", "--threshold-ms", "5000")
CANVAS = {  # task → what one run of it publishes (task name → count)
    "builds_chain": {"execapp.tasks.add": 1},  # the first link; the worker sends the rest
    "builds_group": {"execapp.tasks.add": 3},
    "builds_chord": {"execapp.tasks.add": 2},  # the header; the body waits for it
    "replaced": {"execapp.tasks.add": 1},
    "sends_by_name": {"execapp.tasks.add": 1},
    "publishes_from_a_greenlet": {"execapp.tasks.add": 1},  # each copy's own, not the others'
    "stamps": {"execapp.tasks.add": 1},
    "retries_once": {"execapp.tasks.retries_once": 1},
}
FAILING = {
    "fails": "ValueError: bad input file",
    "hook_before_start": "RuntimeError: before_start refused",
    "hook_after_return": "RuntimeError: after_return failed (in after_return)",
    "hook_on_success": "RuntimeError: on_success failed (in on_success)",
    "unstorable_result": "EncodeError",
    "outlives_its_time_limit": "TimeLimitExceeded",
}


def _private_queue() -> str:
    return f"geventcheck-exec-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def redis_db() -> Iterator[Any]:
    require_service("redis")
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=int(DB))
    queues: list[str] = []
    yield client, queues
    for queue in queues:  # the queue and kombu's bindings for it
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    client.close()


def _env(queue: str) -> dict[str, str]:
    return {"EXECAPP_QUEUE": queue, "EXECAPP_REDIS_DB": DB}


@pytest.fixture(scope="module")
def audited(redis_db: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[AuditResult, str]:
    _, queues = redis_db
    queue = _private_queue()
    queues.append(queue)
    result = run_audit("-A", "execapp", *FAST, tmp_path=tmp_path_factory.mktemp("exec"),
                       env=_env(queue))
    return result, queue


def test_results_stay_in_the_audit_not_in_the_apps_result_backend(
        redis_db: Any, tmp_path: Path) -> None:
    """A worker stores results; the audit keeps them in its own process unless allowed."""
    import redis

    db = 11  # a database of its own: nothing else writes task results there
    client = redis.Redis(host="127.0.0.1", port=6379, db=db)
    try:
        client.delete(*client.keys("celery-task-meta-*") or ["-"])
        queue = _private_queue()
        redis_db[1].append(queue)
        result = run_audit("-A", "execapp", "--task", "*.builds_chain", *FAST, tmp_path=tmp_path,
                           env={**_env(queue), "EXECAPP_REDIS_DB": str(db)})
        assert result.task(".builds_chain")["verdict"] == "go", result.stderr
        assert client.keys("celery-task-meta-*") == []
        assert client.llen(queue) == 0
    finally:
        client.delete(queue, f"_kombu.binding.{queue}")
        client.close()


def test_canvas_replace_retry_and_shared_tasks_run_as_on_a_worker(
        audited: tuple[AuditResult, str]) -> None:
    result, queue = audited
    for name, sends in CANVAS.items():
        task = result.task(f".{name}")
        assert task["verdict"] == "go", (name, task["findings"])
        assert "task-error" not in result.kinds(f".{name}"), (name, task["findings"])
        assert task["published"] == {f"{t} → {queue}": n for t, n in sends.items()}, name
    # self.retry() is an outcome of the run, reported, not a failure
    assert result.task(".retries_once")["retried"] >= 1
    assert f"published 3: execapp.tasks.add → {queue}" in result.stdout


def test_failures_in_the_body_a_hook_or_the_result_backend_are_error(
        audited: tuple[AuditResult, str]) -> None:
    result, _ = audited
    assert result.returncode == 1, result.stderr
    for name, message in FAILING.items():
        task = result.task(f".{name}")
        assert task["verdict"] == "error", (name, task["findings"])
        [finding] = [f for f in task["findings"] if f["kind"] == "task-error"]
        assert message in finding["message"], (name, finding["message"])
        assert finding["stack"] and message.split(":")[0] in finding["stack"][-1], finding


def test_nothing_the_tasks_published_reached_the_broker(
        audited: tuple[AuditResult, str], redis_db: Any) -> None:
    result, queue = audited
    client, _ = redis_db
    assert result.report is not None
    assert sum(sum(t["published"].values()) for t in result.report["tasks"]) >= 10
    assert client.llen(queue) == 0
    assert not client.exists(f"_kombu.binding.{queue}")


def test_a_result_backend_that_cannot_load_is_error(redis_db: Any, tmp_path: Path) -> None:
    _, queues = redis_db
    queues.append(queue := _private_queue())
    result = run_audit("-A", "execapp.badbackend", *FAST, tmp_path=tmp_path, env=_env(queue))
    assert result.returncode == 1, result.stderr
    task = result.task(".stores_a_result")
    assert task["verdict"] == "error"
    [finding] = [f for f in task["findings"] if f["kind"] == "task-error"]
    assert "nosuchbackend" in finding["message"]


def test_allow_publish_sends_the_messages_to_the_real_broker(redis_db: Any,
                                                             tmp_path: Path) -> None:
    client, queues = redis_db
    queues.append(queue := _private_queue())
    result = run_audit("-A", "execapp", "--task", "*.sends_by_name", "--allow-publish", *FAST,
                       tmp_path=tmp_path, env=_env(queue))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.task(".sends_by_name")["published"] == {f"execapp.tasks.add → {queue}": 1}
    # warm-up, one solo run, two concurrent copies and the probe's two copies
    assert client.llen(queue) == 6


def test_a_scenario_can_allow_publishing_too(redis_db: Any, tmp_path: Path) -> None:
    client, queues = redis_db
    queues.append(queue := _private_queue())
    scenario = tmp_path / "publish.toml"
    scenario.write_text(f'app = "execapp"\nworkdir = "{APPS}"\nallow_publish = true\n')
    result = run_audit("--scenario", str(scenario), "--task", "*.sends_by_name", *FAST,
                       tmp_path=tmp_path, env=_env(queue))
    assert result.returncode == 0, result.stdout + result.stderr
    assert client.llen(queue) == 6
    assert result.report is not None and result.report["settings"]["allow_publish"] is True


def _on_a_real_worker(queue: str, log: Path, names: list[str]) -> dict[str, bool]:
    """Each task sent once to ``celery -A execapp worker -P gevent -c 4``: did it succeed?
    A hook whose exception the worker only logs counts as a failure, as in the audit."""
    from celery import Celery

    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "execapp", "worker", "-P", "gevent",
             "-c", "4", "-Q", queue, "-n", f"{queue}@%h", "--without-gossip",
             "--without-mingle", "--without-heartbeat", "-l", "INFO"],
            cwd=APPS, env={**os.environ, **_env(queue)}, stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    client = Celery("execapp-client", broker=URL, backend=URL, set_as_current=False)
    try:
        sent = {name: client.send_task(f"execapp.tasks.{name}", queue=queue) for name in names}
        states = {}
        for name, async_result in sent.items():
            async_result.get(timeout=30, propagate=False)
            states[name] = async_result.state
        proc.send_signal(signal.SIGTERM)  # warm shutdown: running tasks finish and log first
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        client.close()
    logged = [line for line in log.read_text(errors="replace").splitlines()
              if "handler raised" in line]
    return {name: states[name] == "SUCCESS"
            and not any(f"[{sent[name].id}]" in line for line in logged) for name in names}


def test_verdicts_match_a_real_gevent_worker(redis_db: Any, audited: tuple[AuditResult, str],
                                             tmp_path: Path) -> None:
    _, queues = redis_db
    audit, _ = audited
    assert audit.report is not None
    ran = [t["name"].rsplit(".", 1)[1] for t in audit.report["tasks"]
           if t["verdict"] != "skipped"]
    assert sorted(ran) == sorted([*CANVAS, *FAILING])
    queues.append(queue := _private_queue())
    succeeded = _on_a_real_worker(queue, tmp_path / "worker.log", ran)
    verdicts = {name: audit.task(f".{name}")["verdict"] for name in ran}
    assert {n: v != "error" for n, v in verdicts.items()} == succeeded, (
        verdicts, (tmp_path / "worker.log").read_text(errors="replace")[-3000:])


def test_django_fixup_closes_each_tasks_connection_as_on_a_worker(tmp_path: Path) -> None:
    """worker_init gets a worker (Django's fixup needs its app), and the fixup closes the
    task greenlet's connection when each task ends: Task.apply skipped both."""
    import json

    require_service("postgres")
    log = tmp_path / "receivers.jsonl"
    result = run_audit("-A", "execdjango.celery_app", *FAST, tmp_path=tmp_path,
                       env={"EXECDJANGO_LOG": str(log)})
    assert result.task(".queries")["verdict"] == "go", result.stdout
    notes = [json.loads(line) for line in log.read_text().splitlines()]
    [init] = [n for n in notes if n["event"] == "worker_init"]
    assert init["app"] == "execdjango" and init["hostname"].startswith("geventcheck@")
    still_open = [n["open"] for n in notes if n["event"] == "postrun"]
    assert still_open and not any(still_open)  # every run, warm-up to probe
