"""Thread-local state greenlets share, end to end on the Django app in ``apps/djangoapp``.

Every hazard has a fixed twin that must stay silent: a native ``_thread._local`` against
``threading.local()`` created after patching, a ContextVar set at import against a value
passed explicitly, and ``django.db`` imported before patching against after.
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import APPS, AuditResult, require_service, run_audit

COPIES = 4
DJANGO = ("-A", "djangoapp.celery_app", "--django-settings", "djangoapp.settings")
# A sitecustomize that imports django.db in the audited process before gevent patches.
PREIMPORT = APPS / "djangoapp" / "preimport"


def _thread_locals(task: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in task["findings"] if f["kind"] == "thread-local"]


def _line_of(relpath: str, needle: str) -> int:
    lines = (APPS / relpath).read_text().splitlines()
    hits = [n for n, text in enumerate(lines, start=1) if needle in text]
    assert len(hits) == 1, (relpath, needle, hits)
    return hits[0]


@pytest.fixture(scope="module")
def locals_audit(tmp_path_factory: pytest.TempPathFactory) -> AuditResult:
    require_service("postgres")
    result = run_audit(
        *DJANGO, "--task", "djangoapp.localtasks.*", "--task", "djangoapp.ctxtasks.*",
        "--runs", "1", "-c", str(COPIES), tmp_path=tmp_path_factory.mktemp("locals"),
        cwd=APPS,
    )
    assert result.report is not None, result.stderr
    return result


def test_native_local_written_by_concurrent_copies_is_an_error(
    locals_audit: AuditResult,
) -> None:
    task = locals_audit.task(".native_local_token")
    [finding] = _thread_locals(task)
    assert finding["severity"] == "error"
    assert task["verdict"] == "no-go"
    # named by the module attribute that holds it, at the line that creates it
    assert "djangoapp.localtasks.native_state = NativeLocal()" in finding["message"]
    assert (finding["file"], finding["line"]) == (
        "djangoapp/localtasks.py", _line_of("djangoapp/localtasks.py", "native_state = "))
    assert f"while {COPIES} copies ran at once the task wrote 'token'" in finding["message"]
    assert "native_local_token()" in finding["message"]
    assert "gevent.local" in finding["fix"] or "threading.local()" in finding["fix"]


def test_native_local_only_read_is_a_warning(locals_audit: AuditResult) -> None:
    [finding] = _thread_locals(locals_audit.task(".native_local_region"))
    assert finding["severity"] == "warning"
    assert "djangoapp.localtasks.native_config" in finding["message"]
    assert "reads it" in finding["message"]


def test_native_local_subclass_held_by_a_class_is_named_by_its_class(
    locals_audit: AuditResult,
) -> None:
    [finding] = _thread_locals(locals_audit.task(".native_subclass_user"))
    assert finding["severity"] == "error"
    assert "djangoapp.localtasks.Registry.session = _Session()" in finding["message"]
    assert "a subclass of the native _thread._local" in finding["message"]
    assert finding["line"] == _line_of("djangoapp/localtasks.py", "session = _Session()")


def test_threading_local_created_after_patching_is_fine(locals_audit: AuditResult) -> None:
    task = locals_audit.task(".greenlet_local_token")
    assert _thread_locals(task) == []
    assert task["verdict"] == "go", task["findings"]


def test_contextvar_set_at_import_is_unset_in_task_greenlets(locals_audit: AuditResult) -> None:
    [finding] = _thread_locals(locals_audit.task(".tenant_from_context"))
    assert finding["severity"] == "warning"
    assert "djangoapp.ctxtasks.TENANT (ContextVar 'tenant') holds 'acme'" in finding["message"]
    # measured inside the task's greenlets, at task_prerun
    assert f"unset in {COPIES} of {COPIES} task greenlets" in finding["message"]
    assert "tenant_from_context() at djangoapp/ctxtasks.py" in finding["message"]
    assert "get() raises LookupError unless given a default" in finding["message"]
    assert (finding["file"], finding["line"]) == (
        "djangoapp/ctxtasks.py", _line_of("djangoapp/ctxtasks.py", "TENANT: ContextVar"))
    assert "task_prerun" in finding["fix"]


def test_value_passed_explicitly_is_fine(locals_audit: AuditResult) -> None:
    task = locals_audit.task(".tenant_passed_explicitly")
    assert _thread_locals(task) == []
    assert task["verdict"] == "go", task["findings"]


def test_django_db_imported_before_patching_shares_one_connection(audit) -> None:
    require_service("postgres")
    result = audit(*DJANGO, "--task", "djangoapp.dbtasks.hold_connection", "--runs", "1",
                   "-c", str(COPIES), cwd=APPS, env={"PYTHONPATH": str(PREIMPORT)})
    assert result.report is not None, result.stderr
    assert "django.db" in result.report["environment"]["imported_before_patch"]
    task = result.task(".hold_connection")
    [finding] = _thread_locals(task)
    assert finding["severity"] == "error"
    assert "django.db.connections keeps its connections in a native thread-local" \
        in finding["message"]
    # The wrapper belongs to the warm-up's greenlet: every later copy is refused.
    assert f"{COPIES} of {COPIES} concurrent copies failed" in finding["message"]
    assert "patch_all()" in finding["fix"]
    assert task["verdict"] == "no-go"


def test_django_db_imported_after_patching_is_fine(audit) -> None:
    require_service("postgres")
    result = audit(*DJANGO, "--task", "djangoapp.dbtasks.hold_connection", "--runs", "1",
                   "-c", str(COPIES), cwd=APPS)
    assert result.report is not None, result.stderr
    assert "django.db" not in result.report["environment"]["imported_before_patch"]
    assert _thread_locals(result.task(".hold_connection")) == []
