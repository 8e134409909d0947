"""Processes a task starts: named, guarded when they are Python, contained by --sandbox.

Every audit here runs inside a fresh network namespace (``unshare --net``) that has
only ``lo``, with 192.0.2.1 (TEST-NET-1) put on it and a trap listening there:
whatever gets past geventcheck lands in the trap's log and nowhere else. The audit
without --sandbox is the control: its shell child does reach the trap.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from .conftest import APPS, SCHEMA

TASKS = "children/tasks.py"

TRAP = r'''
import os, select, socket, sys

log = open(sys.argv[1], "a", buffering=1)
outside = socket.socket(); outside.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
outside.bind(("192.0.2.1", 80)); outside.listen(64); outside.setblocking(False)
sync = socket.socket(); sync.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sync.bind(("127.0.0.1", 8099)); sync.listen(8)
open(sys.argv[2], "w").close()


def drain():
    while True:
        try:
            conn, peer = outside.accept()
        except BlockingIOError:
            return
        log.write(f"{peer[0]} -> 192.0.2.1:80\n")
        conn.close()


while True:
    ready, _, _ = select.select([outside, sync], [], [])
    drain()
    if sync in ready:
        conn, _ = sync.accept()
        conn.sendall(b"k")  # everything that came before is in the log
        conn.close()
'''

BODY = """
ip link set lo up
ip addr add 192.0.2.1/32 dev lo
{python} {trap} {log} {ready} &
trap_pid=$!
for _ in $(seq 100); do [ -e {ready} ] && break; sleep 0.05; done
set +e
export CHILDREN_TRAP=192.0.2.1  # the tasks reach out only when the trap is there
{python} -m geventcheck audit -A children --runs 1 -c 2 --explore 0 --json {report} {args}
rc=$?
{python} -c "import socket; socket.create_connection(('127.0.0.1', 8099)).recv(1)"
kill $trap_pid
exit $rc
"""


def _skip_or_fail(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _audit_in_netns(tmp: Path, *args: str) -> tuple[int, dict[str, Any] | None, list[str], str]:
    """The exit code, the report, the trap's log and stderr of one audit."""
    (tmp / "trap.py").write_text(TRAP)
    body = BODY.format(python=sys.executable, trap=tmp / "trap.py", log=tmp / "trap.log",
                       ready=tmp / "ready", report=tmp / "report.json", args=" ".join(args))
    proc = subprocess.run(["unshare", "--net", "--", "sh", "-ec", body], cwd=APPS,
                          capture_output=True, text=True, timeout=240)
    report = tmp / "report.json"
    log = tmp / "trap.log"
    return (proc.returncode, json.loads(report.read_text()) if report.exists() else None,
            log.read_text().splitlines() if log.exists() else [], proc.stderr)


@pytest.fixture(scope="module")
def netns(tmp_path_factory: pytest.TempPathFactory) -> None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        _skip_or_fail("these tests need unshare (util-linux) and ip (iproute2)")
    proc = subprocess.run(["unshare", "--net", "--", "ip", "link", "set", "lo", "up"],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        _skip_or_fail("these tests need a private network namespace (`unshare --net` as "
                      f"root) and failed to make one: {proc.stderr.strip()}")


def _task(report: dict[str, Any] | None, suffix: str) -> dict[str, Any]:
    assert report is not None
    [task] = [t for t in report["tasks"] if t["name"].endswith(suffix)]
    return task


def _line_of(marker: str) -> int:
    lines = (APPS / TASKS).read_text().splitlines()
    [line] = [n for n, text in enumerate(lines, 1) if text.rstrip().endswith(f"# {marker}")]
    return line


def _of_kind(task: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [f for f in task["findings"] if f["kind"] == kind]


def _started(task: dict[str, Any], marker: str) -> dict[str, Any]:
    """The report's entry for the process started on the line with this marker."""
    [process] = [p for p in task["processes"] if p["line"] == _line_of(marker)]
    assert process["file"] == TASKS
    return process


@pytest.fixture(scope="module")
def sandboxed(netns: None, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _audit_in_netns(tmp_path_factory.mktemp("sandboxed"), "--sandbox")


def test_in_the_sandbox_a_shell_child_gets_nowhere_and_is_named(sandboxed: Any) -> None:
    rc, report, trap, stderr = sandboxed
    assert report is not None, stderr
    assert trap == []  # not one connection reached the outside address
    jsonschema.validate(report, json.loads(Path(SCHEMA).read_text()))
    assert report["settings"]["sandbox"] is True
    task = _task(report, ".shell_child_reaches_out")
    started = _started(task, "the shell line")
    assert started["command"] == "bash -c 'exec 3<>/dev/tcp/192.0.2.1/80'"
    assert started["how"] == "subprocess"
    assert started["exit_codes"] == [1]  # bash: no route to 192.0.2.1
    assert started["count"] == 6  # warm-up, --runs 1, 2 concurrent copies, 2 probe copies
    assert rc == 1  # the Python child's refused egress makes the audit fail


def test_a_python_child_inherits_the_egress_guard(sandboxed: Any) -> None:
    _, report, trap, _ = sandboxed
    assert trap == []
    task = _task(report, ".python_child_reaches_out")
    # refused egress leaves the task not certified (error), never go
    assert task["verdict"] == "error" and task["not_certified"] is True
    assert "192.0.2.1:80" in task["reason"]
    egress = _of_kind(task, "egress")
    assert egress and all(f["endpoint"] == "192.0.2.1:80" for f in egress)
    assert all((f["file"], f["line"]) == (TASKS, _line_of("the python line")) for f in egress)
    assert "a child process" in egress[0]["message"]
    assert "refused it before anything was sent" in egress[0]["message"]


def test_a_child_that_stays_home_is_named_with_its_exit_code(sandboxed: Any) -> None:
    _, report, _, _ = sandboxed
    task = _task(report, ".lists_a_folder")
    assert task["verdict"] == "go"
    started = _started(task, "the ls line")
    assert (started["command"], started["exit_codes"]) == ("ls /", [0])


def test_without_the_sandbox_only_python_children_are_guarded(
        netns: None, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The control: the trap does catch what escapes, and a shell child does escape."""
    _, shell, shell_trap, stderr = _audit_in_netns(
        tmp_path_factory.mktemp("shell"), "--task", "'*shell_child_reaches_out'")
    assert shell is not None, stderr
    assert shell_trap, "without --sandbox the shell child reached the trap"
    started = _started(_task(shell, ".shell_child_reaches_out"), "the shell line")
    assert started["exit_codes"] == [0]  # it connected
    _, python, python_trap, stderr = _audit_in_netns(
        tmp_path_factory.mktemp("python"), "--task", "'*python_child_reaches_out'")
    assert python is not None, stderr
    assert python_trap == []
    assert _of_kind(_task(python, ".python_child_reaches_out"), "egress")


@pytest.mark.service("postgres")
def test_the_sandbox_bridges_the_scenarios_services_in(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Fake APIs, the mail fake and the latency proxy to the real PostgreSQL answer inside
    the namespace as outside: the same verdicts, the same requests counted."""
    from .conftest import require_service, run_audit

    require_service("postgres")
    scenario = str(APPS / "svcapp" / "scenario.toml")
    args = ("--scenario", scenario, "--runs", "1", "-c", "2", "--explore", "0")
    outside = run_audit(*args, tmp_path=tmp_path_factory.mktemp("outside"))
    inside = run_audit(*args, "--sandbox", tmp_path=tmp_path_factory.mktemp("inside"))
    assert inside.report is not None and outside.report is not None, inside.stderr

    def seen(report: dict[str, Any]) -> dict[str, Any]:
        return {t["name"]: (t["verdict"], t["services"],
                            sorted({f["kind"] for f in t["findings"]
                                    if f["severity"] == "error"}))
                for t in report["tasks"]}

    assert seen(inside.report) == seen(outside.report)
    assert inside.report["settings"]["sandbox"] is True
    psycopg2 = inside.task(".count_orders_psycopg2")
    assert any(f.get("service") == "pg" for f in psycopg2["findings"]
               if f["kind"] == "blocking-call")


@pytest.mark.parametrize(("marker", "how", "command", "code"), [
    ("the system line", "os.system", "exit 4", 4),
    ("the spawn line", "os.spawnv", "sh -c 'exit 3'", 3),
])
def test_os_system_and_spawn_are_named_with_their_exit_codes(
        sandboxed: Any, marker: str, how: str, command: str, code: int) -> None:
    _, report, _, _ = sandboxed
    started = _started(_task(report, ".exits_with_codes"), marker)
    assert (started["how"], started["command"], started["exit_codes"]) == (how, command, [code])


def test_the_terminal_names_the_processes_with_v(netns: None) -> None:
    proc = subprocess.run(
        ["unshare", "--net", "--", sys.executable, "-m", "geventcheck", "audit", "-A",
         "children", "--task", "*lists_a_folder", "--runs", "1", "-c", "2", "--explore", "0",
         "-v"], cwd=APPS, capture_output=True, text=True, timeout=240,
        env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert (f"process  subprocess 6 times: ls / (exit code 0) at {TASKS}:"
            f"{_line_of('the ls line')}") in proc.stdout


@pytest.mark.service("postgres")
def test_the_sandbox_bridges_the_apps_own_database_in(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """The Django database is not in any scenario: the audited process declares it once
    the app is loaded, and its queries inside the namespace reach the real PostgreSQL."""
    from .conftest import require_service, run_audit

    require_service("postgres")
    result = run_audit("-A", "djangoapp.celery_app", "--django-settings", "djangoapp.settings",
                       "--task", "djangoapp.dbtasks.hold_connection", "--runs", "1", "-c", "2",
                       "--explore", "0", "--sandbox", cwd=APPS,
                       tmp_path=tmp_path_factory.mktemp("django"))
    task = result.task(".hold_connection")
    assert task["verdict"] == "go", task["findings"]
    assert not [f for f in task["findings"] if f["kind"] in ("task-error", "egress")]
