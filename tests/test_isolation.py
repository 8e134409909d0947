"""Tasks do not judge each other: a verdict is the same alone, in name order and shuffled.

``hooks.a_installs_psycopg_hook`` installs psycogreen's wait callback inside a task;
``hooks.b_queries_postgres`` then runs a slow query with psycopg2. Before isolation,
B looked cooperative whenever A happened to run first. Every other ``c_`` task changes
one more piece of process state, and ``zz_sees_a_clean_process`` raises if any of it
is still in effect when it runs, wherever it lands in the order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from .conftest import APPS, SCHEMA, AuditResult, require_service, run_audit

TASKS = "hooks/tasks.py"
A, B = "hooks.tasks.a_installs_psycopg_hook", "hooks.tasks.b_queries_postgres"
# Audits that put A before B and after it: seed 1 runs A first, seed 2 runs B first.
ORDERS = {"alone": ("--task", B), "name order": (), "shuffle 1": ("--shuffle", "1"),
          "shuffle 2": ("--shuffle", "2")}


def _line_of(marker: str) -> int:
    lines = (APPS / TASKS).read_text().splitlines()
    [line] = [n for n, text in enumerate(lines, 1) if text.rstrip().endswith(f"# {marker}")]
    return line


@pytest.fixture(scope="module")
def audits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, AuditResult]:
    require_service("postgres")
    results = {}
    for name, extra in ORDERS.items():
        results[name] = run_audit("-A", "hooks", "--runs", "1", "-c", "2", "--explore", "0",
                                  *extra, cwd=APPS, tmp_path=tmp_path_factory.mktemp("hooks"))
    return results


def _order(result: AuditResult) -> list[str]:
    assert result.report is not None, result.stderr
    return [t["name"] for t in result.report["tasks"]]


@pytest.mark.service("postgres")
@pytest.mark.parametrize("order", list(ORDERS))
def test_a_blocking_driver_is_no_go_whatever_ran_before_it(
        audits: dict[str, AuditResult], order: str) -> None:
    result = audits[order]
    task = result.task(".b_queries_postgres")
    assert task["verdict"] == "no-go", task["findings"]
    errors = [f for f in task["findings"] if f["severity"] == "error"]
    assert {"blocking-call", "unsafe-driver"} <= {f["kind"] for f in errors}
    assert all(f["line"] == _line_of("the query line") for f in errors)
    assert result.returncode == 1
    jsonschema.validate(result.report, json.loads(Path(SCHEMA).read_text()))


@pytest.mark.service("postgres")
def test_the_shuffled_audits_ran_the_hook_before_and_after_the_query(
        audits: dict[str, AuditResult]) -> None:
    """Without this, a seed that never puts A first would prove nothing."""
    assert _order(audits["alone"]) == [B]
    orders = {name: _order(audits[name]) for name in ("name order", "shuffle 1", "shuffle 2")}
    assert orders["name order"] == sorted(orders["name order"])
    assert orders["shuffle 1"] != orders["shuffle 2"]
    before = {name: o.index(A) < o.index(B) for name, o in orders.items()}
    assert before == {"name order": True, "shuffle 1": True, "shuffle 2": False}
    assert audits["shuffle 1"].report is not None
    assert audits["shuffle 1"].report["settings"]["shuffle"] == 1


@pytest.mark.service("postgres")
@pytest.mark.parametrize("order", ["name order", "shuffle 1", "shuffle 2"])
def test_the_task_that_installs_the_hook_is_told_so_at_its_line(
        audits: dict[str, AuditResult], order: str) -> None:
    task = audits[order].task(".a_installs_psycopg_hook")
    [finding] = [f for f in task["findings"] if f["kind"] == "global-state"]
    assert finding["severity"] == "warning"
    assert (finding["file"], finding["line"]) == (TASKS, _line_of("the hook line"))
    assert "psycopg2's wait callback" in finding["message"]
    assert "psycogreen.gevent.gevent_wait_callback" in finding["message"]
    assert "worker start" in finding["fix"]
    assert task["verdict"] == "go"  # a warning: it is the tasks after it that would suffer


@pytest.mark.service("postgres")
@pytest.mark.parametrize(("task", "words"), [
    ("c_patches_json", ["json.dumps changed from json.dumps to hooks.tasks.compact_dumps",
                        "put it back before the next task"]),
    ("c_sets_socket_timeout", ["socket.getdefaulttimeout() changed from None (no timeout) "
                               "to 3.0"]),
    ("c_shrinks_threadpool", ["the gevent hub's threadpool size changed from 10 to 1"]),
    ("c_adds_log_handler", ["the handlers of logger 'hooks.audit' changed from []",
                            "logger 'hooks.audit''s propagate changed from True to False"]),
])
def test_each_piece_of_process_state_a_task_leaves_changed_is_reported(
        audits: dict[str, AuditResult], task: str, words: list[str]) -> None:
    for order in ("name order", "shuffle 2"):
        found: list[dict[str, Any]] = [f for f in audits[order].task(f".{task}")["findings"]
                                       if f["kind"] == "global-state"]
        text = " ".join(f["message"] for f in found)
        for word in words:
            assert word in text, (order, text)
        assert all(f["severity"] == "warning" for f in found)


@pytest.mark.service("postgres")
@pytest.mark.parametrize("order", ["name order", "shuffle 1", "shuffle 2"])
def test_what_one_task_changed_is_put_back_before_the_next(
        audits: dict[str, AuditResult], order: str) -> None:
    task = audits[order].task(".zz_sees_a_clean_process")
    assert task["verdict"] == "go", task["findings"]
    assert task["findings"] == []


@pytest.mark.service("postgres")
def test_every_task_gets_the_same_verdict_in_every_order(
        audits: dict[str, AuditResult]) -> None:
    def verdicts(order: str) -> dict[str, tuple[str, list[str]]]:
        report = audits[order].report
        assert report is not None
        return {t["name"]: (t["verdict"], sorted({f["kind"] for f in t["findings"]
                                                  if f["severity"] == "error"}))
                for t in report["tasks"]}

    in_order = verdicts("name order")
    assert verdicts("shuffle 1") == in_order
    assert verdicts("shuffle 2") == in_order
    assert verdicts("alone") == {B: in_order[B]}
