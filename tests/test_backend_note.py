"""The per-greenlet result backend: said once per app, with the setting that fixes it."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from geventcheck.detectors._backend import per_greenlet_backend

from .conftest import run_audit


def _app(**conf: Any) -> Celery:
    app = Celery("note", broker="memory://", set_as_current=False)
    app.conf.update(conf)
    return app


@pytest.mark.parametrize(("backend", "builds"), [
    ("redis://127.0.0.1:6379/15", "RedisBackend (its own Redis connection pool"),
    ("rpc://", "RPCBackend"),
    ("db+postgresql://127.0.0.1/test", "DatabaseBackend (its own SQLAlchemy engine"),
    ("cache+memcached://127.0.0.1:11211/", "CacheBackend (its own client"),
])
def test_a_backend_that_is_not_thread_safe_gets_the_note_and_fix(backend, builds) -> None:
    note = per_greenlet_backend(_app(result_backend=backend))
    assert note is not None and f"builds its own {builds}" in note
    assert note.endswith("fix: set result_backend_thread_safe = True in the Celery configuration")


def test_no_note_when_thread_safe_or_without_a_backend() -> None:
    assert per_greenlet_backend(_app(result_backend="redis://127.0.0.1:6379/15",
                                     result_backend_thread_safe=True)) is None
    assert per_greenlet_backend(_app()) is None
    assert per_greenlet_backend(_app(result_backend="disabled")) is None


def test_namespaced_setting_counts_as_celery_reads_it() -> None:
    class Settings:
        CELERY_RESULT_BACKEND = "redis://127.0.0.1:6379/15"
        CELERY_RESULT_BACKEND_THREAD_SAFE = True

    app = Celery("note", set_as_current=False)
    app.config_from_object(Settings, namespace="CELERY")
    assert per_greenlet_backend(app) is None
    Settings.CELERY_RESULT_BACKEND_THREAD_SAFE = False
    app = Celery("note", set_as_current=False)
    app.config_from_object(Settings, namespace="CELERY")
    assert per_greenlet_backend(app) is not None


def test_the_audit_says_it_once_for_the_app(tmp_path) -> None:
    """Not blamed on a task: one note on stderr, and no result-backend finding on any task."""
    result = run_audit("-A", "backends.redis_app", tmp_path=tmp_path)
    err = " ".join(result.stderr.split())
    assert err.count("note: result_backend_thread_safe is False") == 1, result.stderr
    assert "fix: set result_backend_thread_safe = True" in err
    assert result.report is not None
    assert all(f["kind"] != "result-backend"
               for t in result.report["tasks"] for f in t["findings"])
