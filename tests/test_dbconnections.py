"""Database connections per task on a gevent worker, counted against a real PostgreSQL.

Counts come from Django's ``connection_created`` signal and from ``pg_stat_activity``;
``max_connections`` is read from the server, so the expected capacity verdict is worked
out here from the same server.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

from .conftest import APPS, AuditResult, require_service, run_audit

COPIES = 4
DJANGO = ("-A", "djangoapp.celery_app", "--django-settings", "djangoapp.settings")
PLANNED = 50  # CELERY_WORKER_CONCURRENCY in djangoapp/settings.py
REPLICAS = 3


def _db_findings(task: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in task["findings"] if f["kind"] == "db-connections"]


def _summary(task: dict[str, Any]) -> dict[str, Any]:
    [summary] = [f for f in _db_findings(task) if f["file"] is None]
    return summary


def _number(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    assert match, (pattern, text)
    return int(match.group(1))


def _available_connections() -> int:
    """What max_connections leaves to non-superusers, read as the audit reads it."""
    import psycopg

    with psycopg.connect(
        host=os.environ.get("PGHOST", "127.0.0.1"), port=os.environ.get("PGPORT", "5432"),
        user=os.environ.get("PGUSER", "postgres"), dbname=os.environ.get("PGDATABASE", "test"),
        password=os.environ.get("PGPASSWORD", ""),
    ) as conn:
        rows = conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('max_connections', 'superuser_reserved_connections', 'reserved_connections')"
        ).fetchall()
    settings = {name: int(value) for name, value in rows}
    return settings["max_connections"] - settings["superuser_reserved_connections"] \
        - settings.get("reserved_connections", 0)


@pytest.fixture(scope="module")
def db_audit(tmp_path_factory: pytest.TempPathFactory) -> AuditResult:
    require_service("postgres")
    result = run_audit(
        *DJANGO, "--task", "djangoapp.dbtasks.*", "--runs", "1", "-c", str(COPIES),
        tmp_path=tmp_path_factory.mktemp("db"), cwd=APPS,
        env={"GEVENTCHECK_REPLICAS": str(REPLICAS)},
    )
    assert result.report is not None, result.stderr
    return result


def test_each_copy_holding_a_connection_peaks_at_the_concurrency(db_audit: AuditResult) -> None:
    message = _summary(db_audit.task(".hold_connection"))["message"]
    assert f"{COPIES} of {COPIES} concurrent copies opened" in message
    assert _number(r"opened (\d+) database connections to 'default'", message) == COPIES
    assert _number(r"peak (\d+) open at once", message) == COPIES
    assert _number(r"at most (\d+) per copy", message) == 1
    # PostgreSQL itself listed every one of them at the same time
    assert _number(r"listed at most (\d+) of them at once", message) == COPIES


def test_planned_workers_are_checked_against_max_connections(db_audit: AuditResult) -> None:
    summary = _summary(db_audit.task(".hold_connection"))
    need = PLANNED * REPLICAS
    available = _available_connections()
    message = summary["message"]
    assert f"worker_concurrency {PLANNED} (the app's setting)" in message
    assert f"x {REPLICAS} replicas (GEVENTCHECK_REPLICAS) x 1 per task" in message
    assert f"= up to {need} connections" in message
    assert f"the {available} that max_connections" in message
    if need > available:
        assert summary["severity"] == "warning"
        assert "PgBouncer" in summary["fix"] and "CONN_MAX_AGE cannot help" in summary["fix"]
    else:
        assert summary["severity"] == "info"


def test_within_max_connections_is_only_info(audit) -> None:
    require_service("postgres")
    if _available_connections() < PLANNED:
        pytest.skip(f"this server allows fewer than {PLANNED} connections")
    result = audit(*DJANGO, "--task", "djangoapp.dbtasks.hold_connection", "--runs", "1",
                   "-c", str(COPIES), cwd=APPS, env={"GEVENTCHECK_REPLICAS": "1"})
    task = result.task(".hold_connection")
    summary = _summary(task)
    assert summary["severity"] == "info"
    assert f"up to {PLANNED} connections, within" in summary["message"]
    assert task["verdict"] == "go", task["findings"]


def test_connection_of_a_spawned_greenlet_is_left_open(db_audit: AuditResult) -> None:
    task = db_audit.task(".query_in_spawned_greenlet")
    [left] = [f for f in _db_findings(task) if f["file"] is not None]
    assert left["severity"] == "warning"
    assert left["file"] == "djangoapp/dbtasks.py" and left["function"] == "_backend_pid"
    # Each copy's spawned greenlet opened one. The garbage collector may free a dead
    # greenlet's wrapper (and close its connection) at any allocation, so not all may be left.
    left_open = _number(r"(\d+) connections? opened by _backend_pid\(\) in a greenlet the task "
                        r"spawned", left["message"])
    assert 1 <= left_open <= COPIES
    # the server still had them when the copies were done
    assert 1 <= _number(r"still lists (\d+) of them", left["message"]) <= COPIES
    assert "fixup closes only the task greenlet's own connections" in left["message"]
    assert "close the connection in the greenlet" in left["fix"]


def test_connections_closed_where_opened_are_not_left_open(db_audit: AuditResult) -> None:
    task = db_audit.task(".query_in_spawned_greenlet_closed")
    assert [f for f in _db_findings(task) if f["file"] is not None] == []
    assert _number(r"opened (\d+) database connections", _summary(task)["message"]) == COPIES


def test_task_greenlet_connections_are_closed_by_the_fixup(db_audit: AuditResult) -> None:
    """Celery's Django fixup closes the task greenlet's own connections: not left open."""
    task = db_audit.task(".hold_connection")
    assert [f for f in _db_findings(task) if f["file"] is not None] == []


def test_without_celerys_django_fixup_the_tasks_own_connections_stay_open(audit) -> None:
    """The app is created before DJANGO_SETTINGS_MODULE is set, so Celery adds no fixup."""
    require_service("postgres")
    result = audit("-A", "djangoapp.celery_nofixup", "--task", "*.hold_connection",
                   "--runs", "1", "-c", str(COPIES), cwd=APPS)
    task = result.task(".hold_connection")
    [left] = [f for f in _db_findings(task) if f["file"] is not None]
    assert left["severity"] == "warning" and left["function"] == "hold_connection"
    assert f"{COPIES} connections opened by hold_connection() in the task's own greenlet" \
        in left["message"]
    assert _number(r"still lists (\d+) of them", left["message"]) == COPIES
    assert "no Django fixup" in left["message"]
    assert "DJANGO_SETTINGS_MODULE before the Celery app is created" in left["fix"]
    # no worker_concurrency in this app: the assumed concurrency is said to be one
    assert "-c 100 (assumed" in _summary(task)["message"]


def test_tasks_without_a_database_have_no_connection_findings(audit) -> None:
    require_service("postgres")
    result = audit(*DJANGO, "--task", "djangoapp.ctxtasks.tenant_passed_explicitly",
                   "--runs", "1", "-c", str(COPIES), cwd=APPS)
    assert _db_findings(result.task(".tenant_passed_explicitly")) == []
