"""The release gate: a report, a policy and a baseline in; open or closed out, with reasons.

Pure logic, no printing. The gate is open only when at least one gated task was
certified and every gated task is go or has all its problems accepted, by an
unexpired waiver or by the baseline, and no waiver has expired. A task the audit
did not certify (skipped, error) is a problem of kind ``not-certified``.
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from ._model import (
    Driver,
    Environment,
    Finding,
    Process,
    Report,
    Settings,
    Stats,
    TaskReport,
)
from ._policy import NOT_CERTIFIED, PolicyError, Waiver

BASELINE_SCHEMA = "geventcheck/baseline-v1"
REPORT_SCHEMA = "geventcheck/report-v1"
DEFAULT_QUEUE = "celery"

MESSAGES = {
    "report_unreadable": "{path}: cannot read the report: {error}",
    "report_not_json": "{path}: not a JSON report: {error}",
    "report_schema": "{path}: not a geventcheck report (schema {schema!r}, expected {expected!r})",
    "report_bad": "{path}: task #{index}: {error}",
    "baseline_unreadable": "{path}: cannot read the baseline: {error}",
    "baseline_bad": "{path}: not a geventcheck baseline ({error}); write one with "
                    "--update-baseline",
    "failing": "{count} gated task(s) have problems no waiver or baseline accepts: {names}",
    "expired": "{waiver} expired on {date} ({days} day(s) ago): fix the task, or renew the "
               "waiver with a new date and reason",
    "nothing_certified": "no gated task was certified: none of the {count} gated task(s) ran "
                         "(give them inputs in a scenario file)",
    "nothing_gated": "no task is routed to {queues} (queues in the report: {seen})",
    "unused": "{waiver} matches no problem of a gated task: remove it",
    "not_certified": "not certified ({verdict}): {reason}",
}


class GateError(PolicyError):
    """A report or baseline the gate cannot use; the message is one line."""


Status = Literal["pass", "accepted", "fail"]


@dataclass(frozen=True)
class Problem:
    """One thing that keeps a task from being go: an error finding, or not being certified."""

    task: str
    kind: str
    message: str
    fingerprint: str
    finding: Finding | None = None

    @property
    def where(self) -> str:
        return self.finding.where if self.finding else ""


@dataclass(frozen=True)
class Acceptance:
    problem: Problem
    by: str  # "waiver #N ..." or "baseline"
    reason: str


@dataclass(frozen=True)
class GatedTask:
    task: TaskReport
    status: Status
    open: tuple[Problem, ...] = ()
    accepted: tuple[Acceptance, ...] = ()

    @property
    def queue(self) -> str:
        return self.task.queue or DEFAULT_QUEUE


@dataclass(frozen=True)
class GateResult:
    is_open: bool
    tasks: tuple[GatedTask, ...]
    not_gated: tuple[TaskReport, ...]
    reasons: tuple[str, ...]  # why it is closed; empty when open
    gate_reasons: tuple[str, ...]  # those not about one task: waivers, nothing gated
    warnings: tuple[str, ...]
    expired: tuple[Waiver, ...]
    unused: tuple[Waiver, ...]
    queues: tuple[str, ...] | None
    report: Report
    stale_baseline: int = 0  # baseline entries nothing matched any more (fixed)

    @property
    def exit_code(self) -> int:
        return 0 if self.is_open else 1


# ---- reading reports ------------------------------------------------------------------------

def _task_from_dict(data: dict[str, Any]) -> TaskReport:
    stats = data.get("stats") or {}
    fields = {f.name for f in dataclasses.fields(Stats)}
    return TaskReport(
        name=str(data["name"]), queue=data.get("queue"), verdict=data["verdict"],
        classification=data.get("classification", "unknown"),
        recommended_pool=data.get("recommended_pool", "either"),
        stats=Stats(**{k: v for k, v in stats.items() if k in fields}),
        findings=tuple(Finding.from_dict(f) for f in data.get("findings") or ()),
        services=dict(data.get("services") or {}), reason=data.get("reason"),
        published=dict(data.get("published") or {}), retried=int(data.get("retried") or 0),
        processes=tuple(Process.from_dict(p) for p in data.get("processes") or ()),
    )


def _read_json(path: str, unreadable: str, not_json: str) -> Any:
    """A JSON file, or a GateError worded by the two MESSAGES keys given."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except OSError as exc:
        raise GateError(MESSAGES[unreadable].format(path=path, error=exc.strerror)) from None
    except ValueError as exc:
        raise GateError(MESSAGES[not_json].format(path=path, error=exc)) from None


def read_report(path: str) -> Report:
    """A report written by ``geventcheck audit --json``, checked enough to gate on."""
    data = _read_json(path, "report_unreadable", "report_not_json")
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema != REPORT_SCHEMA or not isinstance(data.get("tasks"), list):
        raise GateError(MESSAGES["report_schema"].format(path=path, schema=schema,
                                                         expected=REPORT_SCHEMA))
    tasks = []
    for index, raw in enumerate(data["tasks"], start=1):
        try:
            task = _task_from_dict(raw)
        except (KeyError, TypeError, AttributeError) as exc:
            raise GateError(MESSAGES["report_bad"].format(path=path, index=index,
                                                          error=f"missing or bad {exc}")) from None
        if task.verdict not in ("go", "no-go", "skipped", "error"):
            raise GateError(MESSAGES["report_bad"].format(
                path=path, index=index, error=f"unknown verdict {task.verdict!r}"))
        tasks.append(task)
    env = data.get("environment") or {}
    settings = data.get("settings") or {}
    known = {f.name for f in dataclasses.fields(Settings)}
    return Report(
        tool_version=str((data.get("tool") or {}).get("version", "?")),
        created=str(data.get("created", "")), app=data.get("app"),
        settings=Settings(**{k: tuple(v) if k == "shims" else v  # type: ignore[arg-type]
                             for k, v in settings.items() if k in known}),
        environment=Environment(
            python=str(env.get("python", "?")), gevent=str(env.get("gevent", "?")),
            patched=bool(env.get("patched", False)), celery=env.get("celery"),
            django=env.get("django"),
            drivers=tuple(Driver(**{k: d.get(k) for k in ("name", "status", "version",
                                                          "detail", "fix")})
                          for d in env.get("drivers") or ()),
            imported_before_patch=tuple(env.get("imported_before_patch") or ()),
        ),
        tasks=tuple(tasks),
    )


_VERDICT_RANK = {"no-go": 0, "error": 1, "skipped": 2, "go": 3}


def merge_reports(reports: list[Report]) -> Report:
    """Several audits (say one per queue, or per shard) as one report. A task audited more
    than once keeps every finding and its worst verdict: a go in one run does not hide a
    no-go in another."""
    if len(reports) == 1:
        return reports[0]
    tasks: dict[str, TaskReport] = {}
    for report in reports:
        for task in report.tasks:
            seen = tasks.get(task.name)
            if seen is None:
                tasks[task.name] = task
                continue
            worst = min(seen, task, key=lambda t: _VERDICT_RANK[t.verdict])
            tasks[task.name] = dataclasses.replace(
                worst, findings=seen.findings + tuple(f for f in task.findings
                                                      if f not in seen.findings))
    first = reports[0]
    return dataclasses.replace(first, tasks=tuple(tasks.values()),
                               app=first.app if all(r.app == first.app for r in reports)
                               else None)


# ---- fingerprints and the baseline ---------------------------------------------------------

_HEX = re.compile(r"0x[0-9a-fA-F]+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_PARENS = re.compile(r"\([^()]*\)")
_SPACE = re.compile(r"\s+")


def normalise_message(message: str) -> str:
    """A message without what changes from run to run: numbers and parenthesised detail
    (durations, counts, a busy machine's share, object addresses)."""
    text = _HEX.sub("#", _PARENS.sub("", message))
    text = _NUMBER.sub("#", text)
    return _SPACE.sub(" ", text).strip()


def normalise_path(path: str | None) -> str:
    """Relative to the working directory when under it, with forward slashes: the same on
    a laptop and in a CI checkout."""
    if not path:
        return ""
    if os.path.isabs(path):
        rel = os.path.relpath(path)
        if not rel.startswith(".."):
            path = rel
    return path.replace(os.sep, "/")


def _detail(finding: Finding) -> str:
    return finding.native or finding.endpoint or normalise_message(finding.message)


def fingerprint(task: str, kind: str, finding: Finding | None) -> str:
    """Task, kind, file, function and the native call (or the message without its numbers):
    never the line, so code moving up or down keeps it."""
    parts = [task, kind]
    if finding is not None:
        parts += [normalise_path(finding.file), finding.function or "", _detail(finding)]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:20]


def problems(task: TaskReport) -> list[Problem]:
    """What keeps ``task`` from go: each error finding, or the task not being certified."""
    if task.not_certified:
        message = MESSAGES["not_certified"].format(verdict=task.verdict,
                                                   reason=task.reason or "no reason given")
        return [Problem(task.name, NOT_CERTIFIED, message,
                        fingerprint(task.name, NOT_CERTIFIED, None))]
    return [Problem(task.name, f.kind, f.message, fingerprint(task.name, f.kind, f), f)
            for f in task.findings if f.severity == "error"]


def read_baseline(path: str) -> set[str]:
    """The fingerprints a baseline file accepts; a missing file accepts nothing."""
    if not os.path.exists(path):
        return set()
    data = _read_json(path, "baseline_unreadable", "baseline_bad")
    if not isinstance(data, dict) or data.get("schema") != BASELINE_SCHEMA or not isinstance(
            data.get("findings"), list):
        raise GateError(MESSAGES["baseline_bad"].format(path=path,
                                                        error=f"schema is not {BASELINE_SCHEMA}"))
    try:
        return {str(entry["fingerprint"]) for entry in data["findings"]}
    except (KeyError, TypeError):
        raise GateError(MESSAGES["baseline_bad"].format(
            path=path, error="an entry has no fingerprint")) from None


def render_baseline(result: GateResult) -> str:
    """Today's problems that no waiver covers, as a reviewable baseline file."""
    entries = []
    for gated in result.tasks:
        kept = [*gated.open, *(a.problem for a in gated.accepted if a.by == "baseline")]
        for problem in kept:
            f = problem.finding
            entries.append({
                "fingerprint": problem.fingerprint, "task": problem.task, "kind": problem.kind,
                "file": normalise_path(f.file) if f else None,
                "function": f.function if f else None,
                "detail": _detail(f) if f else None,
            })
    entries.sort(key=lambda e: (e["task"], e["kind"], e["fingerprint"]))
    unique = list({e["fingerprint"]: e for e in entries}.values())
    return json.dumps({"schema": BASELINE_SCHEMA, "findings": unique}, indent=2) + "\n"


# ---- the decision ---------------------------------------------------------------------------

def gated_tasks(report: Report, queues: Iterable[str] | None) -> tuple[list[TaskReport],
                                                                       list[TaskReport]]:
    """The tasks routed to the gevent queues, and the rest; every task when ``queues`` is
    None. A task with no route goes to Celery's default queue, ``celery``."""
    if queues is None:
        return list(report.tasks), []
    wanted = set(queues)
    inside = [t for t in report.tasks if (t.queue or DEFAULT_QUEUE) in wanted]
    return inside, [t for t in report.tasks if (t.queue or DEFAULT_QUEUE) not in wanted]


def _covers(waiver: Waiver, problem: Problem) -> bool:
    return waiver.kind == problem.kind and fnmatch.fnmatchcase(problem.task, waiver.task)


def evaluate(report: Report, *, waivers: tuple[Waiver, ...] = (),
             queues: tuple[str, ...] | None = None, baseline: set[str] | None = None,
             today: datetime.date | None = None) -> GateResult:
    """Open or closed, task by task, with every reason."""
    today = today or datetime.date.today()
    baseline = baseline or set()
    live = [w for w in waivers if not w.expired(today)]
    expired = tuple(w for w in waivers if w.expired(today))
    used: set[int] = set()
    seen_fingerprints: set[str] = set()
    inside, outside = gated_tasks(report, queues)
    results = []
    for task in inside:
        open_: list[Problem] = []
        accepted: list[Acceptance] = []
        for problem in problems(task):
            seen_fingerprints.add(problem.fingerprint)
            used.update(w.index for w in waivers if _covers(w, problem))
            waiver = next((w for w in live if _covers(w, problem)), None)
            if waiver is not None:
                accepted.append(Acceptance(problem, f"waiver #{waiver.index}", waiver.reason))
            elif problem.fingerprint in baseline:
                accepted.append(Acceptance(problem, "baseline", "in the baseline"))
            else:
                open_.append(problem)
        status: Status = "fail" if open_ else ("accepted" if accepted else "pass")
        results.append(GatedTask(task, status, tuple(open_), tuple(accepted)))
    reasons = []
    for waiver in expired:
        reasons.append(MESSAGES["expired"].format(waiver=waiver.describe(), date=waiver.expires,
                                                  days=(today - waiver.expires).days))
    if not inside:
        seen = sorted({t.queue or DEFAULT_QUEUE for t in report.tasks})
        reasons.append(MESSAGES["nothing_gated"].format(
            queues=", ".join(queues or ()), seen=", ".join(seen) or "none"))
    elif all(t.not_certified for t in inside):
        reasons.append(MESSAGES["nothing_certified"].format(count=len(inside)))
    failing = [g for g in results if g.status == "fail"]
    gate_reasons = tuple(reasons)
    if failing:
        reasons.insert(0, MESSAGES["failing"].format(
            count=len(failing), names=", ".join(g.task.name for g in failing)))
    unused = tuple(w for w in waivers if w.index not in used)
    warnings = [MESSAGES["unused"].format(waiver=w.describe()) for w in unused]
    return GateResult(
        is_open=not reasons, tasks=tuple(results), not_gated=tuple(outside),
        reasons=tuple(reasons), gate_reasons=gate_reasons, warnings=tuple(warnings),
        expired=expired, unused=unused,
        queues=queues, report=report, stale_baseline=len(baseline - seen_fingerprints),
    )


def result_to_dict(result: GateResult) -> dict[str, Any]:
    """The gate's answer for machines (``--json``)."""
    def problem(p: Problem) -> dict[str, Any]:
        f = p.finding
        return {"kind": p.kind, "message": p.message, "fingerprint": p.fingerprint,
                "file": f.file if f else None, "line": f.line if f else None,
                "function": f.function if f else None, "native": f.native if f else None,
                "fix": f.fix if f else None}

    return {
        "schema": "geventcheck/gate-v1",
        "open": result.is_open,
        "exit_code": result.exit_code,
        "reasons": list(result.reasons),
        "warnings": list(result.warnings),
        "gevent_queues": list(result.queues) if result.queues is not None else None,
        "app": result.report.app,
        "tasks": [
            {"name": g.task.name, "queue": g.queue, "verdict": g.task.verdict,
             "status": g.status, "open": [problem(p) for p in g.open],
             "accepted": [{**problem(a.problem), "by": a.by, "reason": a.reason}
                          for a in g.accepted]}
            for g in result.tasks
        ],
        "not_gated": [{"name": t.name, "queue": t.queue or DEFAULT_QUEUE}
                      for t in result.not_gated],
        "expired_waivers": [{"task": w.task, "kind": w.kind, "expires": w.expires.isoformat(),
                             "where": w.where} for w in result.expired],
        "unused_waivers": [{"task": w.task, "kind": w.kind, "where": w.where}
                           for w in result.unused],
        "stale_baseline_entries": result.stale_baseline,
    }
