"""The ExamX scenario audits as its README's verdict table says, task by task.

The table in scenarios/examx/README.md is the specification: the test parses it, runs the
audit the README gives, and fails on any task where the two disagree.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import ROOT, require_service

EXAMX = ROOT / "scenarios" / "examx"
README = EXAMX / "README.md"
CPU_TASKS = {
    "admin_app.views.bulk_import_tasks_async.bulk_upload_questions_task",
    "admin_app.views.question_paper_approval_export.generate_question_paper_pdfs",
    "admin_app.views.qp_template_draft.run_summary_metrics_task",
    "ai_app.views.question_paper_parser.process_paper_task",
    "admin_app.tasks.order_copy_tasks.generate_order_copy_pdf_task",
    "admin_app.tasks.order_copy_tasks.update_order_copy_pdf_task",
}
# Kinds only the global-state and thread-local detectors report: the README keeps them in
# a column of their own and leaves them out of the verdict column.
STATE_KINDS = {"global-state", "thread-local"}
_TICKED = re.compile(r"`([^`]+)`")


@dataclass(frozen=True)
class Row:
    task: str
    queue: str
    verdict: str
    main: frozenset[str]  # finding kinds the audit must report
    waits_on: frozenset[str]  # services the task must have called
    later: frozenset[str]  # kinds of the state detectors' column


def _kinds(cell: str) -> frozenset[str]:
    """The finding kinds named in a cell (as `code`); file names and the like are not."""
    from geventcheck._kinds import FINDING_KINDS

    return frozenset(word for word in _TICKED.findall(cell) if word in FINDING_KINDS)


def verdict_table(path: Path = README) -> dict[str, Row]:
    """The README's table with the columns task, queue, verdict, main finding, waits on."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line.startswith("| task |") and "| verdict |" in line)
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    col = {name: header.index(name) for name in ("task", "queue", "verdict", "main finding",
                                                 "waits on")}
    later = next(i for i, name in enumerate(header) if name.startswith("also expected"))
    rows: dict[str, Row] = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == len(header), f"README table row has the wrong width: {line}"
        [task] = _TICKED.findall(cells[col["task"]])
        assert task not in rows, f"{task} is in the README table twice"
        rows[task] = Row(
            task=task, queue=cells[col["queue"]], verdict=cells[col["verdict"]],
            main=_kinds(cells[col["main finding"]]),
            waits_on=frozenset(_TICKED.findall(cells[col["waits on"]])),
            later=_kinds(cells[later]),
        )
    return rows


def test_the_readme_table_lists_the_25_tasks_of_the_report() -> None:
    rows = verdict_table()
    assert len(rows) == 25
    assert set(rows) >= CPU_TASKS
    assert {r.verdict for r in rows.values()} <= {"go", "no-go"}
    assert {r.queue for r in rows.values()} == {
        "bulk_upload", "question_enrichment", "question_generator_ai", "default"}
    for row in rows.values():
        assert not row.main & STATE_KINDS, f"{row.task}: state kinds go in the last column"
        assert (row.verdict == "no-go") == bool(row.main), row
    # tests and docs point at the hardcoded pool on line 35
    line_35 = (EXAMX / "examx" / "celery.py").read_text().splitlines()[34]
    assert line_35 == 'app.conf.worker_pool = "prefork"'


def test_the_postgresql_scenario_follows_the_schema() -> None:
    import json
    import tomllib

    import jsonschema

    schema = json.loads((ROOT / "geventcheck" / "schemas" / "scenario.schema.json").read_text())
    jsonschema.validate(tomllib.loads((EXAMX / "scenario-postgres.toml").read_text()), schema)


def _disagreements(row: Row, task: dict) -> list[str]:
    findings = task["findings"]
    kinds = {f["kind"] for f in findings}
    errors = {f["kind"] for f in findings if f["severity"] == "error"}
    expected = row.verdict
    if expected == "go" and errors & row.later:
        expected = "no-go"  # what the last column expects, now that its detectors report
    problems = []
    if task["queue"] != row.queue:
        problems.append(f"queue {task['queue']!r}, README says {row.queue!r}")
    if task["verdict"] != expected:
        problems.append(f"verdict {task['verdict']!r}, README says {expected!r}")
    if row.main - kinds:
        problems.append(f"no {sorted(row.main - kinds)} finding")
    if errors - row.main - row.later:
        problems.append(f"errors the README does not name: {sorted(errors - row.main - row.later)}")
    from geventcheck.detectors import KINDS

    landed = {kind for kind in row.later if kind in KINDS}
    if landed - kinds:
        problems.append(f"no {sorted(landed - kinds)} finding, though its detector has landed")
    state = {f["kind"] for f in findings
             if f["kind"] in STATE_KINDS and f["severity"] != "info"} - row.later
    if state:
        problems.append(f"{sorted(state)} findings the README's last column does not name")
    idle = {name for name in row.waits_on if not task["services"].get(name)}
    if idle:
        problems.append(f"never called {sorted(idle)} (services: {task['services']})")
    return problems


def _crashes(result) -> list[str]:
    """Tasks during which the audited process died, with the thread that crashed."""
    out = []
    for task in (result.report or {}).get("tasks", []):
        for finding in task["findings"]:
            if finding["kind"] == "crash":
                where = [line for line in finding.get("stack", []) if "File" in line][:3]
                out.append(f"{task['name']}: {finding['message']} {where}")
    return out


def test_examx_audit_gives_the_verdicts_of_its_readme(audit, tmp_path) -> None:
    rows = verdict_table()

    started = time.perf_counter()
    # the demo database and uploads go to tmp_path instead of $TMPDIR/examx-<pid>
    result = audit("--scenario", "scenarios/examx/scenario.toml", cwd=ROOT,
                   env={"EXAMX_DATA_DIR": str(tmp_path / "examx-data")})
    print(f"\nexamx audit: {time.perf_counter() - started:.1f} s wall for {len(rows)} tasks")
    assert result.report is not None, result.stderr
    assert not _crashes(result), _crashes(result)
    assert result.returncode == 1, result.stderr  # it has no-go tasks
    got = {t["name"]: t for t in result.report["tasks"]}
    assert set(got) == set(rows), (set(got) ^ set(rows))
    problems = [f"{name}: {problem}" for name, row in rows.items()
                for problem in _disagreements(row, got[name])]
    for name in sorted(CPU_TASKS):
        task = got[name]
        if (task["classification"], task["recommended_pool"]) != ("cpu", "prefork"):
            problems.append(f"{name}: {task['classification']}/{task['recommended_pool']}, "
                            f"not cpu/prefork (stats {task['stats']})")
    assert not problems, "the audit and scenarios/examx/README.md disagree:\n" + "\n".join(
        problems)
    assert result.report["environment"]["patched"] is True


@pytest.mark.service("postgres")
def test_examx_on_postgresql_flags_the_raw_psycopg2_refresh(audit, tmp_path) -> None:
    """The README's PostgreSQL section: the DBA-role refresh blocks, Django's driver does not."""
    require_service("postgres")
    import psycopg2

    admin = psycopg2.connect(host="127.0.0.1", port=5432, dbname="postgres", user="postgres",
                             connect_timeout=5)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:  # one test session at a time uses examx_audit
            cur.execute("SELECT pg_advisory_lock(hashtext('geventcheck examx_audit'))")
            cur.execute("DROP DATABASE IF EXISTS examx_audit")
            cur.execute("CREATE DATABASE examx_audit")
        result = audit("--scenario", "scenarios/examx/scenario-postgres.toml",
                       "--task", "user_app.utility.refresh_question_paper_view",
                       "--task", "utility.tasks.*", cwd=ROOT,
                       env={"EXAMX_DATA_DIR": str(tmp_path / "examx-data")})
    finally:
        with admin.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS examx_audit WITH (FORCE)")
        admin.close()
    assert result.returncode == 1, result.stderr
    refresh = result.task("refresh_question_paper_view")
    assert refresh["verdict"] == "no-go"
    assert {"blocking-call", "unsafe-driver"} <= result.kinds("refresh_question_paper_view")
    assert refresh["services"].get("pg", 0) > 0
    assert result.task("check_db_connections")["verdict"] == "go"
