"""The pool doctor on every row of FIELD-NOTES section 1, statically and against real workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from .conftest import APPS, require_service

CELERY_PY = APPS / "poolcfg" / "celery.py"


def _line(marker: str, path: Path = CELERY_PY) -> int:
    return next(n for n, t in enumerate(path.read_text().splitlines(), 1) if marker in t)


def doctor(tmp_path: Path, *worker_args: str, conf_pool: str = "prefork",
           env: dict[str, str] | None = None, live: float = 0) -> tuple[int, dict, str]:
    """``live``: seconds to wait for a real worker's answer (0: static answer only)."""
    out = tmp_path / "doctor.json"
    cmd = [sys.executable, "-m", "geventcheck", "doctor", "-A", "poolcfg", "--json", str(out)]
    if live:
        cmd += ["--live", "--live-timeout", str(live)]
    clean = {k: v for k, v in os.environ.items() if k != "CELERY_WORKER_POOL"}
    proc = subprocess.run([*cmd, "--", *worker_args], cwd=APPS, capture_output=True, text=True,
                          timeout=120, env={**clean, "POOLCFG_POOL": conf_pool, **(env or {})})
    data = json.loads(out.read_text()) if out.exists() else {}
    return proc.returncode, data, proc.stdout + proc.stderr


# (worker args, app.conf.worker_pool, environment) -> (pool used, patched early?)
ROWS = [
    (["worker"], "gevent", {}, "gevent", False),
    (["worker", "-P", "prefork"], "gevent", {}, "gevent", False),
    (["worker", "-P", "gevent"], "prefork", {}, "gevent", True),
    (["worker", "--pool=gevent"], "prefork", {}, "gevent", True),
    (["worker", "-P", "gevent"], "gevent", {}, "gevent", True),
    (["worker", "-P", "processes"], "gevent", {}, "prefork", False),
    (["worker", "-Pgevent"], "prefork", {}, "gevent", False),
    (["worker"], "prefork", {"CELERY_WORKER_POOL": "gevent"}, "gevent", False),
]
IDS = ["conf-only", "P-prefork+conf", "P-gevent", "pool=gevent", "both", "processes",
       "attached", "env"]


@pytest.mark.parametrize(("args", "conf", "env", "pool", "patched"), ROWS, ids=IDS)
def test_static_answer_matches_celery(tmp_path, args, conf, env, pool, patched) -> None:
    code, data, output = doctor(tmp_path, *args, conf_pool=conf, env=env)
    assert (data["effective_pool"], data["patched"]) == (pool, patched), output
    unpatched_gevent = pool == "gevent" and not patched
    kinds = {f["kind"] for f in data["findings"] if f["severity"] == "error"}
    assert ("unpatched-worker" in kinds or "pool-config" in kinds) == unpatched_gevent, output
    if unpatched_gevent:
        assert code == 1


def test_hardcoded_pool_is_named_with_what_it_really_does(tmp_path) -> None:
    _, data, _ = doctor(tmp_path, "worker", "-P", "gevent", "-c", "80", "-Q", "io")
    [config] = [f for f in data["findings"] if f["kind"] == "pool-config"]
    assert (config["file"], config["line"]) == ("poolcfg/celery.py", _line("hardcoded pool"))
    assert "ignored" in config["message"] and config["severity"] == "info"
    assert (data["concurrency"], data["prefetch"], data["queues"]) == (80, 1, ["io"])
    _, data, _ = doctor(tmp_path, "worker", conf_pool="gevent")
    [config] = [f for f in data["findings"] if f["kind"] == "pool-config"]
    assert "it decides" in config["message"] and config["severity"] == "error"


def test_gevent_traps_of_the_configuration(tmp_path) -> None:
    _, data, _ = doctor(tmp_path, "worker", "-P", "gevent", "-c", "80")
    by_kind = {f["kind"]: f for f in data["findings"]}
    never = by_kind["signal-never-sent"]
    assert "setup_tracing()" in never["message"] and "worker_process_init" in never["message"]
    assert never["line"] == _line("@signals.worker_process_init.connect")
    assert "soft time limits" in by_kind["time-limit"]["message"]
    assert "broker_pool_limit is 10, below the concurrency 80" in by_kind["pool-limit"]["message"]


def test_bad_invocations_are_one_line_and_exit_2(tmp_path) -> None:
    for args in (["beat"], ["worker", "--no-such-option"]):
        code, _, output = doctor(tmp_path, *args)
        assert code == 2, output
        assert len(output.strip().splitlines()) == 1 and "Traceback" not in output


@pytest.mark.parametrize(("args", "conf", "env", "pool", "patched"), ROWS, ids=IDS)
def test_live_worker_confirms_the_static_answer(tmp_path, args, conf, env, pool,
                                               patched) -> None:
    """A real worker over the real Redis broker says how it runs tasks."""
    require_service("redis")
    # a worker that will answer gets time to start on a busy machine; an unpatched gevent
    # worker never answers, so waiting long for it proves nothing more
    wait = 6 if pool == "gevent" and not patched else 30
    _, data, output = doctor(tmp_path, *args, "-c", "2", conf_pool=conf, env=env, live=wait)
    live = data["live"]
    if patched:
        assert live["ran_probe"] and live["patched"] and live["in_greenlet"], output
    elif pool == "gevent":
        # unpatched gevent: it consumes the probe and never runs it, or runs it unpatched
        assert not live.get("patched"), output
    else:
        assert live["ran_probe"] and not live["patched"] and not live["in_greenlet"], output
    assert "live-mismatch" not in {f["kind"] for f in data["findings"]}


def test_examx_report_command_lines(tmp_path) -> None:
    """The report's belief: the hardcoded prefork line beats -P gevent. The doctor says no."""
    examx = APPS.parent.parent / "scenarios" / "examx"
    out = tmp_path / "examx.json"
    hardcoded = _line('app.conf.worker_pool = "prefork"', examx / "examx" / "celery.py")
    for args, pool, patched, effect in [
        (["worker", "-P", "gevent", "-c", "80", "-Q", "default"], "gevent", True, "ignored"),
        (["worker", "-c", "8", "-Q", "bulk_upload,default"], "prefork", False, "it decides"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "geventcheck", "doctor", "-A", "examx", "--json", str(out),
             "--", *args], cwd=examx, capture_output=True, text=True, timeout=120)
        data = json.loads(out.read_text())
        assert (data["effective_pool"], data["patched"]) == (pool, patched), proc.stdout
        [config] = [f for f in data["findings"] if f["kind"] == "pool-config"]
        assert (config["file"], config["line"]) == ("examx/celery.py", hardcoded)
        assert hardcoded == 35 and effect in config["message"]


def run_doctor(app: str, *worker_args: str, env: dict[str, str] | None = None,
               options: tuple[str, ...] = (), timeout: float = 120) -> tuple[int, str, str]:
    """``geventcheck doctor -A app [options] -- worker_args`` as a user runs it, in tests/apps.

    Returns the exit code, stdout with its wrapping undone, and stderr."""
    cmd = [sys.executable, "-m", "geventcheck", "doctor", "-A", app, *options]
    proc = subprocess.run([*cmd, "--", *worker_args], cwd=APPS, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    return proc.returncode, " ".join(proc.stdout.split()), proc.stderr


BACKEND_APPS = [
    ("backends.redis_app", "RedisBackend (its own Redis connection pool, so a new connection "
                           "per task)"),
    ("backends.rpc_app", "RPCBackend (its own result consumer"),
    ("backends.db_app", "DatabaseBackend (its own SQLAlchemy engine, so a new database "
                        "connection per task)"),
]


@pytest.mark.parametrize(("app", "builds"), BACKEND_APPS, ids=["redis", "rpc", "db"])
def test_doctor_names_the_per_greenlet_result_backend(tmp_path, app, builds) -> None:
    """Any result backend: no traceback, exit 0 (a warning), the trap and its one-line fix."""
    results = tmp_path / "results.sqlite"
    code, out, err = run_doctor(app, "worker", "-P", "gevent", "-c", "20",
                                env={"BACKENDS_DB": str(results)})
    assert (code, err) == (0, ""), out + err
    assert f"celery -A {app} worker -P gevent -c 20 pool: gevent patched: yes" in out
    assert "warning result-backend result_backend_thread_safe is False (Celery's default): " \
           f"on a gevent worker every task greenlet builds its own {builds}" in out
    assert "fix: set result_backend_thread_safe = True in the Celery configuration" in out
    assert not results.exists(), "the doctor reads the configuration, it opens no backend"


def test_doctor_on_prefork_does_not_blame_the_result_backend() -> None:
    code, out, err = run_doctor("backends.redis_app", "worker", "-c", "4")
    assert (code, err) == (0, ""), out + err
    assert "pool: prefork" in out and "result-backend" not in out


def test_doctor_reads_django_style_namespaced_settings() -> None:
    """CELERY_RESULT_BACKEND_THREAD_SAFE with namespace="CELERY" is what Celery reads."""
    code, out, err = run_doctor("backends.djangostyle", "worker", "-P", "gevent", "-c", "20")
    assert (code, err) == (0, ""), out + err
    assert "result-backend" not in out
    assert "broker_pool_limit is 4, below the concurrency 20" in out


def test_doctor_reads_celery_3_setting_names() -> None:
    code, out, err = run_doctor("backends.oldnames", "worker", "-P", "gevent", "-c", "20")
    assert (code, err) == (0, ""), out + err
    assert "broker_pool_limit is 4, below the concurrency 20" in out
    assert "soft time limits are set, and the gevent pool ignores them silently" in out
    assert "builds its own RedisBackend" in out


def test_doctor_follows_the_result_backend_environment_variable() -> None:
    """CELERY_RESULT_BACKEND in the environment beats the code, in Celery and so here."""
    code, out, err = run_doctor("backends.redis_app", "worker", "-P", "gevent",
                                env={"CELERY_RESULT_BACKEND": "disabled"})
    assert (code, err) == (0, ""), out + err
    assert "result-backend" not in out


LIVE_BROKERS = [
    ("redis", "redis://127.0.0.1:6379/12", "redis://127.0.0.1:6379/12"),
    ("rabbitmq", "amqp://guest:guest@127.0.0.1:5672//", "rpc://"),
]


def _delete(broker: str, queue: Any) -> None:
    """Delete a test queue; kombu's Redis transport forgets only bindings it declared itself."""
    from kombu import Connection

    with Connection(broker) as conn:
        bound = queue(conn.default_channel)
        bound.declare()
        bound.delete()
        bound.exchange.delete()


def _leftovers_of(broker: str, private: str) -> list[str]:
    """Anything the broker still holds under the doctor's private queue name."""
    from kombu import Connection

    if broker.startswith("redis"):
        import redis

        client = redis.Redis.from_url(broker)
        left = [k.decode() for k in client.keys("*") if private.encode() in k]
        left += [f"unacked: {v!r}" for v in client.hvals("unacked") if private.encode() in v]
        left += [f"binding deadline: {m!r}"
                 for m in client.zrange("_kombu.binding_deadlines", 0, -1)
                 if private.encode() in m]
        return left
    from amqp.exceptions import NotFound

    with Connection(broker) as conn:
        try:
            conn.channel().queue_declare(private, passive=True)
        except NotFound:
            return []
        return [f"queue {private}"]


@pytest.mark.parametrize(("service", "broker", "backend"), LIVE_BROKERS,
                         ids=["redis", "rabbitmq"])
@pytest.mark.parametrize("pool_args", [("-P", "gevent"), ("-Pgevent",)],
                         ids=["patched", "unpatched"])
def test_live_never_touches_the_apps_queue(service, broker, backend, pool_args) -> None:
    """A message waiting in the app's queue (named on the worker's -Q) is still there after
    --live, and nothing of the doctor's private queue or its probe is left in the broker."""
    from kombu import Connection, Exchange, Queue

    require_service(service)
    name = f"geventcheck-test.{uuid.uuid4().hex}"
    app_queue = Queue(name, Exchange(name), routing_key=name)  # as Celery declares its queues
    with Connection(broker) as conn:
        conn.Producer().publish({"keep": "me"}, exchange=app_queue.exchange, routing_key=name,
                                declare=[app_queue], serializer="json")
    patched = pool_args == ("-P", "gevent")
    try:
        code, out, err = run_doctor(
            "backends.liveapp", "worker", *pool_args, "-c", "2", "-Q", name, "--purge",
            options=("--live", "--live-timeout", "30" if patched else "6"),
            env={"LIVEAPP_BROKER": broker, "LIVEAPP_BACKEND": backend,
                 "LIVEAPP_QUEUE": "default"})
        assert (code, err) == ((0, "") if patched else (1, "")), out + err
        assert ("ran_probe=True" in out) == patched, out
        assert f"queues: {name}" in out
        [private] = [w for w in out.split() if w.startswith("queue=geventcheck.doctor.")]
        private = private.removeprefix("queue=")
        assert f"queue={private} (deleted)" in out
        assert _leftovers_of(broker, private) == []
        if backend.startswith("redis"):
            import redis

            assert redis.Redis.from_url(backend).keys("celery-task-meta-*") == [], \
                "the probe stored a result in the app's result backend"
        with Connection(broker) as conn:
            bound = app_queue(conn.default_channel)
            kept = bound.get(no_ack=True)
            assert kept is not None and kept.payload == {"keep": "me"}, "--live took it"
            assert bound.get(no_ack=True) is None, "--live put something in the app's queue"
    finally:
        _delete(broker, app_queue)


def test_live_without_a_reachable_broker_is_one_line_and_exit_2() -> None:
    import socket

    with socket.socket() as sock:  # a loopback port nothing listens on once it is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    broker = f"redis://127.0.0.1:{port}/0"
    code, out, err = run_doctor("backends.liveapp", "worker", "-P", "gevent",
                                options=("--live",),
                                env={"LIVEAPP_BROKER": broker, "LIVEAPP_BACKEND": broker,
                                     "LIVEAPP_QUEUE": "default"})
    assert (code, out) == (2, ""), out + err
    assert err.startswith("geventcheck: error: --live: cannot reach the app's broker")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(("given", "kept"), [
    ("worker -P gevent -c 80 -Q io", "worker -P gevent -c 80"),
    ("worker -Pgevent -Qio,default --purge -B -E", "worker -Pgevent"),
    ("worker --pool=gevent --queues=io --queues io -X bulk -BE -c4", "worker --pool=gevent -c4"),
    ("worker -BEQ io -P gevent", "worker -P gevent"),
    ("worker -EB -l info -n w1@%h --pidfile /run/w.pid -f /var/log/w --statedb=/tmp/s "
     "-s schedule --scheduler x", "worker -l info"),
    ("worker -O fair --autoscale 10,3 --discard -D --events --time-limit 30",
     "worker -O fair --autoscale 10,3 --time-limit 30"),
])
def test_live_worker_gets_no_option_that_reaches_the_apps_queues(given, kept) -> None:
    """Queues, purge, beat, events and the deployment's files are left out; the pool
    option stays exactly as written, since Celery's patching scan reads it raw."""
    from geventcheck._doctorlive import private_worker_args

    assert " ".join(private_worker_args(given.split())) == kept


def test_live_with_a_database_backend_stores_no_result(tmp_path) -> None:
    """The worker's start-up builds the app's backend (Celery creates its tables), but the
    probe writes no row in it."""
    import sqlite3
    from contextlib import closing

    require_service("redis")
    results = tmp_path / "results.sqlite"
    code, out, err = run_doctor("backends.db_app", "worker", "-P", "gevent", "-c", "2",
                                options=("--live", "--live-timeout", "30"),
                                env={"BACKENDS_DB": str(results)})
    assert (code, err) == (0, ""), out + err
    assert "ran_probe=True" in out and "(deleted)" in out, out
    with closing(sqlite3.connect(results)) as db:
        assert db.execute("select count(*) from celery_taskmeta").fetchone() == (0,)


@pytest.mark.parametrize("pool", ["gevent", "prefork"])
def test_live_on_redis_does_not_put_back_other_workers_unacked_messages(pool) -> None:
    """Every Redis consumer re-queues messages another worker took over an hour ago and
    never acknowledged; the doctor's worker must not, or it publishes into the app's queue."""
    import time

    import redis
    from kombu import Connection, Exchange, Queue

    require_service("redis")
    broker = "redis://127.0.0.1:6379/12"
    client = redis.Redis.from_url(broker)
    name = f"geventcheck-test.{uuid.uuid4().hex}"
    app_queue = Queue(name, Exchange(name), routing_key=name)
    with Connection(broker) as conn:
        conn.Producer().publish({"taken": "by a worker that died"}, exchange=app_queue.exchange,
                                routing_key=name, declare=[app_queue], serializer="json")
    # what kombu's QoS records when a worker takes it, two hours ago (see QoS.append)
    raw = client.rpop(name)
    tag = f"geventcheck-test-{uuid.uuid4().hex}"
    client.hset("unacked", tag, json.dumps([json.loads(raw), name, name]))
    client.zadd("unacked_index", {tag: time.time() - 7200})
    try:
        code, out, err = run_doctor(
            "backends.liveapp", "worker", "-P", pool, "-c", "2", "-Q", name,
            options=("--live", "--live-timeout", "30"),
            env={"LIVEAPP_BROKER": broker, "LIVEAPP_BACKEND": broker, "LIVEAPP_QUEUE": name})
        assert (code, err) == (0, ""), out + err
        assert "ran_probe=True" in out, out
        assert client.llen(name) == 0, "--live put a message into the app's queue"
        assert client.hexists("unacked", tag)
    finally:
        client.hdel("unacked", tag)
        client.zrem("unacked_index", tag)
        _delete(broker, app_queue)
