"""What the audit may claim: only what it ran, and a supervisor that never hangs or loops.

Every audit runs through the installed command in a subprocess, as a user runs it.
The subprocess timeouts are a safety net for a hang, not claims about speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from .conftest import APPS, ROOT, SCHEMA

SHARED_SCHEMA = ROOT.parent / "shared" / "report.schema.json"
NET = 240  # seconds: only ever reached by an audit that hangs


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    report: dict[str, Any] | None
    markdown: str | None

    def task(self, suffix: str) -> dict[str, Any]:
        assert self.report is not None, self.stderr
        [task] = [t for t in self.report["tasks"] if t["name"].endswith(suffix)]
        return task

    def row(self, suffix: str) -> list[str]:
        """The cells of the task's first line in the terminal table."""
        [line] = [line for line in self.stdout.splitlines()
                  if line.startswith("│") and line.split("│")[1].strip().endswith(suffix)]
        return [cell.strip() for cell in line.split("│")[1:-1]]


def _command() -> list[str]:
    script = Path(sys.executable).with_name("geventcheck")
    return [str(script)] if script.exists() else [sys.executable, "-m", "geventcheck"]


def audit(tmp_path: Path, *args: str) -> Run:
    report, markdown = tmp_path / "report.json", tmp_path / "plan.md"
    proc = subprocess.run(
        [*_command(), "audit", *args, "--runs", "1", "-c", "2", "--explore", "0",
         "--json", str(report), "--markdown", str(markdown)],
        cwd=APPS, capture_output=True, text=True, timeout=NET,
        env={**os.environ, "COLUMNS": "200"},
    )
    data = json.loads(report.read_text()) if report.exists() else None
    if data is not None:
        _validate(data)
    return Run(proc.returncode, proc.stdout, proc.stderr, data,
               markdown.read_text() if markdown.exists() else None)


def _validate(report: dict[str, Any]) -> None:
    jsonschema.validate(report, json.loads(SCHEMA.read_text()))
    if SHARED_SCHEMA.exists():
        jsonschema.validate(report, json.loads(SHARED_SCHEMA.read_text()))


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# -- report only what was certified ---------------------------------------------------------

def test_an_app_whose_every_task_was_skipped_exits_1_saying_nothing_was_certified(
    tmp_path: Path,
) -> None:
    run = audit(tmp_path, "-A", "certify.skipped")
    assert run.returncode == 1, run.stderr
    assert "nothing was certified" in run.stderr
    assert "--scenario" in run.stderr and "calls" in run.stderr
    assert run.report is not None
    assert run.report["summary"]["go"] == 0
    assert run.report["summary"]["not_run"] == 2
    assert "2 of 2 not run" in run.stdout


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A queue holding a go task, a CPU-bound task and a task nobody gave arguments."""
    return audit(tmp_path_factory.mktemp("mixed"), "-A", "certify.mixed")


def test_a_skipped_task_says_why_it_did_not_run_and_recommends_no_pool(mixed: Run) -> None:
    task = mixed.task(".charge")
    assert task["verdict"] == "skipped"
    assert task["not_certified"] is True
    assert "order_id" in task["reason"] and "--scenario" in task["reason"]
    assert task["stats"]["runs"] == 0
    assert "task-error" not in {f["kind"] for f in task["findings"]}
    # the required field stays valid; the flag says it is no recommendation, and the table
    # shows none
    assert task["recommended_pool"] != "prefork"
    cells = mixed.row(".charge")
    assert cells[2] == "skipped" and cells[4] == "-"
    assert "not run" in cells[6]
    assert mixed.task(".fetch")["not_certified"] is False


def test_the_summary_counts_the_tasks_not_run(mixed: Run) -> None:
    assert mixed.report is not None
    summary = mixed.report["summary"]
    assert (summary["skipped"], summary["not_run"], summary["not_certified"]) == (1, 1, 1)
    assert "1 of 3 not run" in mixed.stdout


def test_the_plan_routes_no_task_that_never_ran(mixed: Run) -> None:
    assert mixed.report is not None and mixed.markdown is not None
    plan = mixed.report["plan"]
    # the CPU-bound task moves to a prefork queue of its own; the task never run goes nowhere
    assert plan["task_routes"] == {"certify.mixed.crunch": {"queue": "io_prefork"}}
    for queue in plan["queues"]:
        assert "certify.mixed.charge" not in queue["tasks"]
    [gevent] = [q for q in plan["queues"] if q["pool"] == "gevent"]
    assert "certify.mixed.charge" in gevent["why"]  # its worker would still run it
    assert [n["task"] for n in plan["not_certified"]] == ["certify.mixed.charge"]
    assert "## Not certified" in mixed.markdown
    assert '"certify.mixed.charge"' not in mixed.markdown  # not in the routes to paste


def test_skipped_tasks_do_not_fail_an_audit_whose_tasks_that_ran_are_go(
    tmp_path: Path,
) -> None:
    run = audit(tmp_path, "-A", "certify.mixed", "--task", "*.fetch", "--task", "*.charge")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.report is not None
    assert run.report["summary"]["not_run"] == 1
    assert "nothing was certified" not in run.stderr


def test_a_task_stopped_by_the_egress_guard_is_not_certified_and_names_the_host_to_fake(
    tmp_path: Path,
) -> None:
    run = audit(tmp_path, "-A", "certify.egress")
    assert run.returncode == 1, run.stderr
    task = run.task(".phone_home")
    assert task["verdict"] not in ("go", "no-go")
    assert task["not_certified"] is True
    assert task["recommended_pool"] != "prefork"
    assert "telemetry.example.com:443" in task["reason"] and "scenario" in task["reason"]
    [endpoint] = {f["endpoint"] for f in task["findings"] if f["kind"] == "egress"}
    assert endpoint == "telemetry.example.com:443"
    cells = run.row(".phone_home")
    assert cells[4] == "-"
    assert "telemetry.example.com" in cells[6]  # the top reason
    assert not run.report["plan"]["task_routes"]  # type: ignore[index]


# -- the supervisor never hangs or loops ----------------------------------------------------

def test_a_worker_init_receiver_that_exits_is_one_error_line_not_a_restart_loop(
    tmp_path: Path,
) -> None:
    run = audit(tmp_path, "-A", "certify.initexit")
    assert run.returncode == 2
    line = _one_error_line(run.stderr)
    assert line.startswith("geventcheck: error:")
    assert "exited with code 3" in line and "worker_init" in line
    assert run.report is None


def test_a_start_up_that_segfaults_is_one_error_line_naming_the_app_line(tmp_path: Path) -> None:
    run = audit(tmp_path, "-A", "certify.initcrash")
    assert run.returncode == 2
    line = _one_error_line(run.stderr)
    assert "was killed by signal SIGSEGV at certify/initcrash.py:" in line


def test_a_worker_init_receiver_that_never_returns_is_one_error_line(tmp_path: Path) -> None:
    run = audit(tmp_path, "-A", "certify.inithangs", "--task-timeout", "1")
    assert run.returncode == 2
    line = _one_error_line(run.stderr)
    assert "start-up did not finish" in line and "worker_init" in line


def test_a_failure_in_geventcheck_before_the_first_task_is_an_internal_error(
    tmp_path: Path,
) -> None:
    run = audit(tmp_path, "-A", "certify.oursfail")
    assert run.returncode == 3
    line = _one_error_line(run.stderr)
    assert line.startswith("geventcheck: internal error:")
    assert "geventcheck/" in line and "please report" in line


@pytest.fixture(scope="module")
def grandchild(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return audit(tmp_path_factory.mktemp("grandchild"), "-A", "certify.grandchild",
                 "--task-timeout", "5")


def test_a_task_that_leaves_a_sleep_60_running_does_not_hold_the_audit(
    grandchild: Run,
) -> None:
    for name in (".starts_sleep", ".starts_sleep_keeping_fds", ".forks_sleeper"):
        assert grandchild.task(name)["verdict"] == "go", grandchild.task(name)


def test_a_worker_that_dies_while_a_forked_copy_holds_the_channel_is_a_crash(
    grandchild: Run,
) -> None:
    task = grandchild.task(".zz_forks_then_exits")
    [crash] = [f for f in task["findings"] if f["kind"] == "crash"]
    assert "exited with code 5" in crash["message"]
    assert {f["kind"] for f in task["findings"]} & {"timeout", "deadlock"} == set()


def test_a_queue_where_no_task_was_certified_gets_no_pool_in_the_plan() -> None:
    from geventcheck._model import Environment, Report, Settings, Stats, TaskReport
    from geventcheck._plan import make_plan

    never = TaskReport("proj.export", "reports", "skipped", "unknown", "either", Stats(),
                       reason="not run: it needs arguments (day)")
    mail = TaskReport("proj.mail", "default", "go", "io", "gevent", Stats(3, 200.0, 2.0, 0.0))
    plan = make_plan(Report("0", "now", "proj", Settings(), Environment("3.11", "26", True),
                            (never, mail)))
    assert [q.queue for q in plan.queues] == ["default"]
    assert plan.routes == {}
    assert plan.not_certified == (never,)
    assert plan.to_dict()["not_certified"] == [
        {"task": "proj.export", "queue": "reports", "reason": "not run: it needs arguments (day)"}]
