"""``geventcheck audit --with-shims``: the fixes applied and proven, through the real command
line against the real PostgreSQL and MariaDB, and ``offload`` seen by the audit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema

from .conftest import APPS, SCHEMA, AuditResult, require_service

COPIES = 4
# PyMySQL's TLS set-up costs CPU on every connect (see test_drivers): judge the 200 ms wait.
THRESHOLD = ("--threshold-ms", "150")


def _run(audit: Any, *args: str, env: dict[str, str] | None = None) -> AuditResult:
    result: AuditResult = audit("--runs", "1", "-c", str(COPIES), "--task-timeout", "20", *args,
                                cwd=APPS, env=env)
    assert result.report is not None, f"no report (exit {result.returncode}): {result.stderr}"
    return result


def test_with_shims_auto_turns_psycopg2_and_mysqlclient_tasks_from_no_go_to_go(
        audit: Any, tmp_path: Path) -> None:
    require_service("postgres")
    require_service("mariadb")
    plan = tmp_path / "plan.md"
    result = _run(audit, "-A", "drivers", "--task", "drivers.pg2.*",
                  "--task", "drivers.mysqlclient.*", *THRESHOLD, "--with-shims", "auto",
                  "--markdown", str(plan))
    report = result.report
    assert report is not None
    jsonschema.validate(report, json.loads(SCHEMA.read_text()))  # the section is an extra
    shims = report["shims"]
    assert shims["requested"] == ["auto"]
    assert sorted(shims["applied"]) == ["mysqldb", "psycopg2"], shims
    by_task = {t["name"]: t for t in shims["tasks"]}
    for task, shim, driver in (("drivers.pg2.pg_sleep", "psycopg2", "psycopg2"),
                               ("drivers.mysqlclient.mysql_sleep", "mysqldb", "MySQLdb")):
        outcome = by_task[task]
        assert outcome["shims"] == [shim], outcome
        assert outcome["before"] == {"verdict": "no-go",
                                     "reason": f"no-go: {driver} blocking in poll()"}, outcome
        assert outcome["after"] == {"verdict": "go",
                                    "reason": f"go with geventcheck.patches.{shim}"}, outcome
        assert result.task(task)["verdict"] == "go", result.task(task)
        row = (f"{task}: no-go: {driver} blocking in poll() → go with "
               f"geventcheck.patches.{shim}")
        assert row in result.stdout, result.stdout
        assert f"| `{task}` | no-go: {driver} blocking in poll() | go with " \
               f"geventcheck.patches.{shim} |" in plan.read_text()
    # the environment still tells the truth about the app without shims
    drivers = {d["name"]: d["status"] for d in report["environment"]["drivers"]}
    assert drivers["psycopg2"] == "blocking" and drivers["MySQLdb"] == "blocking", drivers
    assert "geventcheck.patches.bootstrap(app)" in plan.read_text()
    assert result.returncode == 0, result.stdout + result.stderr


def test_with_shims_named_applies_only_those(audit: Any) -> None:
    require_service("postgres")
    require_service("mariadb")
    result = _run(audit, "-A", "drivers", "--task", "drivers.pg2.*",
                  "--task", "drivers.mysqlclient.*", *THRESHOLD, "--with-shims", "psycopg2")
    assert result.report is not None
    shims = result.report["shims"]
    assert shims["applied"] == ["psycopg2"], shims
    assert [t["name"] for t in shims["tasks"]] == ["drivers.pg2.pg_sleep"], shims
    assert result.task("drivers.pg2.pg_sleep")["verdict"] == "go"
    mysql = result.task("drivers.mysqlclient.mysql_sleep")
    assert mysql["verdict"] == "no-go", mysql
    assert result.returncode == 1


def test_unsafe_driver_fix_names_its_shim_and_the_line_to_add(audit: Any) -> None:
    require_service("postgres")
    result = _run(audit, "-A", "drivers", "--task", "drivers.pg2.*")
    task = result.task("drivers.pg2.pg_sleep")
    fixes = [f["fix"] for f in task["findings"] if f["kind"] == "unsafe-driver"]
    assert fixes, task["findings"]
    for fix in fixes:
        assert "geventcheck.patches.psycopg2" in fix, fix
        assert "`geventcheck.patches.bootstrap(app)`" in fix, fix
        assert ("`import geventcheck.patches.psycopg2; geventcheck.patches.psycopg2.patch()`"
                in fix), fix
    assert "shims" not in result.report  # type: ignore[operator]


def test_offload_makes_a_native_sleep_go_in_the_audit(audit: Any) -> None:
    result = _run(audit, "-A", "offloaded")
    blocked = result.task("offloaded.native_sleep")
    assert blocked["verdict"] == "no-go", blocked
    assert "blocking-call" in result.kinds("offloaded.native_sleep")
    offloaded = result.task("offloaded.offloaded_sleep")
    assert offloaded["verdict"] == "go", offloaded
    assert offloaded["classification"] == "io", offloaded


def test_with_shims_when_nothing_needs_one_says_so(audit: Any) -> None:
    result = _run(audit, "-A", "offloaded", "--task", "offloaded.offloaded_sleep",
                  "--with-shims", "auto")
    assert result.report is not None
    assert result.report["shims"]["applied"] == [], result.report["shims"]
    assert result.report["shims"]["note"] == ("the driver inventory found no library that a "
                                              "shim fixes")
    assert result.returncode == 0, result.stdout + result.stderr


def test_bad_with_shims_is_one_line_and_exit_2(tmp_path: Path) -> None:
    for value, says in (("nope", "--with-shims: unknown shim 'nope'; give 'auto' or names "
                                 "from: grpc, mysqldb, psycopg, psycopg2, redis"),
                        (",", "--with-shims: expected 'auto' or a comma-separated list of "
                              "shims, got ','")):
        proc = subprocess.run(
            [sys.executable, "-m", "geventcheck", "audit", "-A", "offloaded", "--with-shims",
             value], cwd=APPS, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [f"geventcheck: error: {says}"], proc.stderr



def test_psycopg_imported_before_patching_is_explained_as_import_order(audit: Any) -> None:
    require_service("postgres")
    preimport = APPS / "drivers" / "preimport_psycopg"
    result = _run(audit, "-A", "drivers", "--task", "drivers.pg3.*", "--with-shims", "auto",
                  env={"PYTHONPATH": str(preimport)})
    assert result.report is not None
    [psycopg] = [d for d in result.report["environment"]["drivers"] if d["name"] == "psycopg"]
    assert psycopg["status"] == "blocking", psycopg
    assert "psycopg was imported before patching" in psycopg["detail"], psycopg
    assert psycopg["fix"].startswith("no shim can fix it, the fix is the import order"), psycopg
    # the app loads psycopg2 and mysqlclient too (for other tasks): their shims have no task here
    assert result.report["shims"]["note"] == (
        "no task was no-go because of mysqldb, psycopg2: nothing to audit again; no shim can "
        "fix psycopg: see the driver's fix"), result.report["shims"]
    assert result.report["shims"]["tasks"] == [] and result.report["shims"]["applied"] == []
    assert result.task("drivers.pg3.pg_sleep")["verdict"] == "no-go"


def test_with_shims_auto_sizes_a_shared_redis_pool_at_concurrency_150(audit: Any) -> None:
    """One module-level client, 150 concurrent tasks: redis-py's default pool of 100 raises
    "Too many connections" for the others; with the redis shim they wait their turn."""
    require_service("redis")
    result: AuditResult = audit("-A", "sharedredis", "--runs", "1", "-c", "150", "--explore",
                                "0", "--with-shims", "auto", cwd=APPS)
    assert result.report is not None, result.stderr
    [outcome] = result.report["shims"]["tasks"]
    assert outcome["shims"] == ["redis"], outcome
    assert outcome["before"] == {
        "verdict": "no-go",
        "reason": "no-go: redis-py's pool raised \"Too many connections\" at concurrency 150"}
    assert outcome["after"]["verdict"] == "go", outcome
    task = result.task("sharedredis.wait_on_redis")
    assert task["verdict"] == "go", task
    assert not [f for f in task["findings"] if "Too many connections" in f["message"]], task
