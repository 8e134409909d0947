"""The bootstrap line in a real ``celery worker``: shims on a patched gevent worker, nothing
on prefork, a loud warning when the pool is gevent but the process is not patched.

Each test starts a real worker on its own queue of the real Redis and talks to it as a
producer does (by task name: the test process never imports the app).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from .conftest import APPS, require_service, run_audit

BROKER = "redis://127.0.0.1:6379/13"
QUERY_S = 0.5
COPIES = 5
# Five queries one after another take at least this long.
SERIAL_S = COPIES * QUERY_S


@contextmanager
def worker(*args: str, conf_pool: str | None = None,
           env: dict[str, str] | None = None) -> Iterator[tuple[Any, str, list[str]]]:
    """A real ``celery -A bootstrapped worker`` on a queue of its own; always killed."""
    from celery import Celery

    queue = f"bootstrapped-{uuid.uuid4().hex[:8]}"
    extra = env or {}
    env = {**os.environ, "BOOTSTRAPPED_BROKER": BROKER, "BOOTSTRAPPED_BACKEND": BROKER,
           "BOOTSTRAPPED_QUEUE": queue, **extra}
    env.pop("CELERY_WORKER_POOL", None)
    for name in ("GEVENTCHECK_BOOTSTRAP", "BOOTSTRAPPED_WITHOUT_LINE"):
        if name not in extra:
            env.pop(name, None)
    if conf_pool:
        env["BOOTSTRAPPED_CONF_POOL"] = conf_pool
    cmd = [sys.executable, "-m", "celery", "-A", "bootstrapped", "worker", *args, "-Q", queue,
           "-n", f"{queue}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
           "--loglevel", "INFO"]
    proc = subprocess.Popen(cmd, cwd=APPS, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")),
                              daemon=True)
    reader.start()
    client = Celery("producer", broker=BROKER, backend=BROKER)
    try:
        yield client, queue, lines
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the worker and its pool children
        proc.wait(timeout=30)
        reader.join(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()
        import redis

        r = redis.Redis.from_url(BROKER)
        r.delete(queue)
        r.close()
        client.close()


def _state(client: Any, queue: str, lines: list[str]) -> dict[str, Any]:
    result = client.send_task("bootstrapped.tasks.state", queue=queue)
    try:
        value: dict[str, Any] = result.get(timeout=90)
    except Exception as exc:
        raise AssertionError(f"the worker did not answer ({exc!r}):\n{''.join(lines)}") from exc
    result.forget()
    return value


@pytest.fixture
def services() -> None:
    require_service("redis")
    require_service("postgres")
    require_service("mariadb")


@pytest.mark.usefixtures("services")
def test_gevent_worker_with_the_bootstrap_runs_psycopg2_queries_together() -> None:
    with worker("-P", "gevent", "-c", "150") as (client, queue, lines):
        state = _state(client, queue, lines)
        assert state["patched"] is True, state
        assert state["wait_callback"] == "psycogreen.gevent", state
        # tasks.py says `import MySQLdb` at its top: the bootstrap ran before it
        assert state["mysqldb_is_pymysql"] is True, state
        # concurrency 150 is above redis-py's default pool of 100: the pool was sized for it
        assert state["redis_limit"] == 150, state
        results = [client.send_task("bootstrapped.tasks.slow_query", args=[QUERY_S],
                                    queue=queue) for _ in range(COPIES)]
        spans = [r.get(timeout=60) for r in results]
        for r in results:
            r.forget()
    starts, ends = [s for s, _ in spans], [e for _, e in spans]
    # every query had started before the first one ended: they waited together
    assert max(starts) < min(ends), spans
    assert max(ends) - min(starts) < SERIAL_S, spans


@pytest.mark.usefixtures("services")
def test_prefork_worker_with_the_bootstrap_is_untouched() -> None:
    with worker("-P", "prefork", "-c", "1") as (client, queue, lines):
        state = _state(client, queue, lines)
    assert state == {**state, "patched": False, "wait_callback": None,
                     "mysqldb_is_pymysql": False, "redis_limit": 100}, state
    assert not [line for line in lines if "geventcheck" in line], lines


@pytest.mark.usefixtures("services")
def test_gevent_pool_without_patching_is_said_loudly() -> None:
    """worker_pool = "gevent" in the configuration and no -P: Celery runs gevent unpatched."""
    with worker(conf_pool="gevent") as (_client, _queue, lines):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("NOT monkey-patched" in x for x in lines):
            time.sleep(0.2)
    said = [line for line in lines if "NOT monkey-patched" in line]
    assert said, "".join(lines)
    assert "worker_pool" in said[0], said


@pytest.mark.parametrize(("args", "conf_pool", "severity", "says"), [
    (["-P", "gevent", "-c", "150"], None, "info",
     "this gevent worker is patched, so it applies geventcheck.patches.psycopg2"),
    (["-P", "prefork"], None, "info", "on the prefork pool it does nothing"),
    ([], "gevent", "warning", "runs the gevent pool unpatched"),
], ids=["gevent", "prefork", "unpatched"])
def test_doctor_says_the_bootstrap_is_in_place(tmp_path, args, conf_pool, severity,
                                               says) -> None:
    out = tmp_path / "doctor.json"
    env = {k: v for k, v in os.environ.items() if k != "CELERY_WORKER_POOL"}
    if conf_pool:
        env["BOOTSTRAPPED_CONF_POOL"] = conf_pool
    proc = subprocess.run(
        [sys.executable, "-m", "geventcheck", "doctor", "-A", "bootstrapped", "--json", str(out),
         "--", "worker", *args], cwd=APPS, capture_output=True, text=True, timeout=120, env=env)
    assert out.exists(), proc.stderr
    found = [f for f in json.loads(out.read_text())["findings"] if f["kind"] == "bootstrap"]
    assert len(found) == 1, found
    assert found[0]["severity"] == severity and says in found[0]["message"], found
    assert found[0]["file"].endswith("bootstrapped/celery.py"), found
    line = next(n for n, text in enumerate(
        (APPS / "bootstrapped" / "celery.py").read_text().splitlines(), 1)
        if "# the bootstrap line" in text)
    assert found[0]["line"] == line, found


@pytest.mark.usefixtures("services")
def test_the_audit_sees_the_app_as_its_bootstrapped_gevent_worker(tmp_path) -> None:
    """The audited process is a patched gevent worker: the bootstrap applies its shims there
    too, so the audit judges the app as it will really run."""
    result = run_audit("-A", "bootstrapped", "--task", "*.state", "--runs", "1",
                       cwd=APPS, tmp_path=tmp_path)
    assert result.report is not None, result.stderr
    drivers = {d["name"]: d["status"] for d in result.report["environment"]["drivers"]}
    assert drivers["psycopg2"] == "shimmed" and drivers["MySQLdb"] == "shimmed", drivers
    assert result.task("bootstrapped.tasks.state")["verdict"] == "go"


@pytest.mark.usefixtures("services")
def test_the_environment_variable_bootstraps_an_app_without_the_line() -> None:
    """GEVENTCHECK_BOOTSTRAP=1: the celery command's plugin bootstraps the app before Celery
    imports its task modules (which import MySQLdb at their top)."""
    env = {"BOOTSTRAPPED_WITHOUT_LINE": "1", "GEVENTCHECK_BOOTSTRAP": "1"}
    with worker("-P", "gevent", "-c", "10", env=env) as (client, queue, lines):
        state = _state(client, queue, lines)
    assert state["wait_callback"] == "psycogreen.gevent", state
    assert state["mysqldb_is_pymysql"] is True, state


@pytest.mark.usefixtures("services")
def test_without_the_line_nor_the_variable_nothing_is_shimmed() -> None:
    with worker("-P", "gevent", "-c", "10", env={"BOOTSTRAPPED_WITHOUT_LINE": "1"}) as (
            client, queue, lines):
        state = _state(client, queue, lines)
    assert state["patched"] is True, state
    assert state["wait_callback"] is None and state["mysqldb_is_pymysql"] is False, state


def test_doctor_says_the_environment_variable_bootstraps_the_app(tmp_path) -> None:
    out = tmp_path / "doctor.json"
    env = {k: v for k, v in os.environ.items() if k != "CELERY_WORKER_POOL"}
    env.update(BOOTSTRAPPED_WITHOUT_LINE="1", GEVENTCHECK_BOOTSTRAP="1")
    proc = subprocess.run(
        [sys.executable, "-m", "geventcheck", "doctor", "-A", "bootstrapped", "--json", str(out),
         "--", "worker", "-P", "gevent"], cwd=APPS, capture_output=True, text=True,
        timeout=120, env=env)
    assert out.exists(), proc.stderr
    found = [f for f in json.loads(out.read_text())["findings"] if f["kind"] == "bootstrap"]
    assert [f["message"].split(":")[0] for f in found] == [
        "GEVENTCHECK_BOOTSTRAP=1 is set"], found
    assert "so it applies geventcheck.patches.psycopg2" in found[0]["message"], found
