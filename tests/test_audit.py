"""The audit end to end, through the real command line, on an app with every hazard."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from .conftest import APPS, SCHEMA, AuditResult, run_audit


@pytest.fixture(scope="module")
def hazards(tmp_path_factory: pytest.TempPathFactory) -> AuditResult:
    """One audit of the hazards app; short timeouts so deadlocks and hangs cost seconds."""
    return run_audit(
        "-A", "hazards", "--task-timeout", "3", "-c", "3", "--runs", "2",
        tmp_path=tmp_path_factory.mktemp("hazards"),
    )


def test_report_validates_against_the_schema(hazards: AuditResult) -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(hazards.report, schema)
    shared = Path(__file__).resolve().parents[2] / "shared" / "report.schema.json"
    if shared.exists():  # the contract we ship must be the one agreed in shared/
        assert json.loads(shared.read_text()) == schema


def test_exit_code_is_1_when_any_task_is_no_go(hazards: AuditResult) -> None:
    assert hazards.returncode == 1, hazards.stderr
    summary = hazards.report["summary"]
    assert summary["go"] == 4 and summary["skipped"] == 2 and summary["error"] == 1


def test_the_child_was_patched_and_celery_builtins_are_not_audited(hazards: AuditResult) -> None:
    assert hazards.report["environment"]["patched"] is True
    assert not [t for t in hazards.report["tasks"] if t["name"].startswith("celery.")]


def test_cooperative_task_is_go(hazards: AuditResult) -> None:
    task = hazards.task(".cooperative_sleep")
    assert task["verdict"] == "go"
    assert task["classification"] == "io"
    assert task["recommended_pool"] == "gevent"
    assert task["stats"]["max_block_ms"] == 0
    # four copies of a 50 ms cooperative wait overlap instead of queueing
    assert task["stats"]["concurrent_wall_ms"] < 3 * 50


def test_cpu_loop_is_cpu_bound_and_belongs_on_prefork(hazards: AuditResult) -> None:
    task = hazards.task(".cpu_loop")
    assert task["verdict"] == "no-go"
    assert task["classification"] == "cpu"
    assert task["recommended_pool"] == "prefork"
    assert task["queue"] == "cpu"
    [finding] = [f for f in task["findings"] if f["kind"] == "cpu-bound"]
    assert finding["severity"] == "error"
    assert finding["file"] == "hazards/tasks.py" and finding["function"] == "cpu_loop"
    # the measured CPU time (what the task did), not the threshold
    assert 100 <= finding["duration_ms"] <= finding["wall_ms"] < 10_000
    assert finding["cpu_ms"] >= finding["duration_ms"]
    assert "prefork" in finding["fix"]


def test_native_sleep_is_a_blocking_call_named_with_its_line(hazards: AuditResult) -> None:
    task = hazards.task(".native_sleep")
    assert task["verdict"] == "no-go"
    [finding] = [f for f in task["findings"] if f["kind"] == "blocking-call"]
    line = _line_of("hazards/tasks.py", "the blocking line")
    assert (finding["file"], finding["line"]) == ("hazards/tasks.py", line)
    assert "usleep" in finding["native"] and "sleeping natively" in finding["native"]
    assert finding["cpu_ms"] < 0.5 * finding["duration_ms"]
    assert 70 <= finding["duration_ms"] < 1000
    assert "threadpool" in finding["fix"]


def test_native_lock_held_across_a_wait_is_a_deadlock_and_the_audit_goes_on(
    hazards: AuditResult,
) -> None:
    task = hazards.task(".mp_lock_across_wait")
    assert task["verdict"] == "no-go"
    [finding] = [f for f in task["findings"] if f["kind"] == "deadlock"]
    assert "futex" in finding["message"]
    assert finding["file"] == "hazards/tasks.py" and finding["function"] == "mp_lock_across_wait"
    # every thread's and greenlet's stack, including the greenlet holding the lock
    assert any(line.startswith("greenlet") for line in finding["stack"])
    # tasks after it in the alphabet still ran in a fresh child
    assert hazards.task(".native_sleep")["stats"]["runs"] > 0


def test_task_that_never_returns_is_a_timeout(hazards: AuditResult) -> None:
    task = hazards.task(".waits_forever")
    [finding] = [f for f in task["findings"] if f["kind"] == "timeout"]
    assert finding["severity"] == "error"
    assert any("waits_forever" in line for line in finding["stack"])


def test_os_exit_is_a_crash_with_exit_code_and_line(hazards: AuditResult) -> None:
    [finding] = [f for f in hazards.task(".calls_os_exit")["findings"] if f["kind"] == "crash"]
    assert "exited with code 3" in finding["message"]
    assert finding["line"] == _line_of("hazards/tasks.py", "the exit line")


def test_sys_exit_is_a_crash(hazards: AuditResult) -> None:
    [finding] = [f for f in hazards.task(".calls_sys_exit")["findings"] if f["kind"] == "crash"]
    assert "SystemExit(4)" in finding["message"]
    assert finding["function"] == "calls_sys_exit"


def test_segfault_is_a_crash_naming_the_signal_and_the_app_line(hazards: AuditResult) -> None:
    [finding] = [f for f in hazards.task(".segfaults")["findings"] if f["kind"] == "crash"]
    assert "SIGSEGV" in finding["message"]
    assert (finding["file"], finding["function"]) == ("hazards/tasks.py", "segfaults")


def test_output_on_stdout_and_fd1_does_not_break_the_audit(hazards: AuditResult) -> None:
    assert hazards.task(".noisy")["verdict"] == "go"
    assert "{not json}" not in hazards.stdout


def test_failing_task_is_error_not_no_go(hazards: AuditResult) -> None:
    task = hazards.task(".always_fails")
    assert task["verdict"] == "error"
    [finding] = [f for f in task["findings"] if f["kind"] == "task-error"]
    assert "ValueError: bad input file" in finding["message"]


def test_task_needing_arguments_is_skipped_with_how_to_supply_them(hazards: AuditResult) -> None:
    task = hazards.task(".needs_args")
    assert task["verdict"] == "skipped" and task["not_certified"] is True
    assert "user_id" in task["reason"]
    assert "mode" not in task["reason"]  # it has a default
    assert "--scenario" in task["reason"]


def test_native_wait_that_keeps_the_gil_is_seen_though_the_monitor_cannot_run(
    hazards: AuditResult,
) -> None:
    task = hazards.task(".gil_held_native_wait")
    assert task["verdict"] == "no-go"
    errors = [f for f in task["findings"] if f["severity"] == "error"]
    assert errors and {f["kind"] for f in errors} == {"blocking-call"}
    worst = max(errors, key=lambda f: f["duration_ms"])
    assert "kept the GIL" in worst["message"]
    assert 140 <= worst["duration_ms"] < 1000 and worst["cpu_ms"] < 0.5 * worst["duration_ms"]
    assert "prefork" in worst["fix"]


def test_native_computation_that_keeps_the_gil_is_cpu_bound(hazards: AuditResult) -> None:
    task = hazards.task(".gil_held_native_cpu")
    assert task["verdict"] == "no-go"
    assert task["recommended_pool"] == "prefork"
    errors = [f for f in task["findings"] if f["severity"] == "error"]
    assert errors and {f["kind"] for f in errors} == {"cpu-bound"}
    assert all("kept the GIL" in f["message"] for f in errors)


def test_an_endless_loop_is_cpu_work_that_never_finished_not_a_deadlock(
    hazards: AuditResult,
) -> None:
    task = hazards.task(".spins_forever")
    kinds = {f["kind"] for f in task["findings"]}
    assert "deadlock" not in kinds
    [finding] = [f for f in task["findings"] if f["kind"] == "cpu-bound"
                 and f["severity"] == "error"]
    assert "had not finished" in finding["message"]
    assert finding["line"] == _line_of("hazards/tasks.py", "the endless loop") or \
        finding["function"] == "spins_forever"


def test_a_collection_landing_in_a_cooperative_task_is_not_blamed_on_it(
    hazards: AuditResult,
) -> None:
    task = hazards.task(".collects_garbage_cooperatively")
    assert task["verdict"] == "go", task["findings"]
    assert not [f for f in task["findings"] if f["severity"] == "error"]
    collections = [f for f in task["findings"] if f.get("cause") == "garbage-collection"]
    assert collections and all(f["severity"] == "info" for f in collections)
    assert task["stats"]["max_block_ms"] < 50


def test_a_crash_carries_the_tail_of_the_processs_output(hazards: AuditResult) -> None:
    [finding] = [f for f in hazards.task(".segfaults")["findings"] if f["kind"] == "crash"]
    assert "-- output --" in finding["stack"]


def test_table_names_each_verdict(hazards: AuditResult) -> None:
    assert "hazards.tasks.cpu_loop" in hazards.stdout
    assert "no-go" in hazards.stdout and "skipped" in hazards.stdout


def test_task_glob_selects_and_all_go_exits_0(audit) -> None:
    result = audit("-A", "hazards", "--task", "*.cooperative_sleep", "--task", "*.noisy",
                   "--runs", "1", cwd=APPS)
    assert result.returncode == 0, result.stderr
    assert sorted(t["name"] for t in result.report["tasks"]) == [
        "hazards.tasks.cooperative_sleep", "hazards.tasks.noisy"]


def _line_of(relpath: str, marker: str) -> int:
    for number, text in enumerate((APPS / relpath).read_text().splitlines(), start=1):
        if marker in text:
            return number
    raise AssertionError(marker)
