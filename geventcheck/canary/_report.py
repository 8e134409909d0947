"""Every replica's canary summary, added up into the audit's report.

A task is ``no-go`` when some worker saw it stall the hub past the threshold, ``go``
when it ran on the canaried workers and never did, and ``skipped`` (not certified) when
no worker ran it. The verdict speaks of the traffic the workers saw, which the report's
``canary`` section names: workers, the time span, how many runs.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from .. import _version
from .._judge import recommend
from .._model import Classification, Environment, Report, Settings, Stats, TaskReport
from ._digest import UNATTRIBUTED
from ._tally import SCHEMA, TaskTally


@dataclass(frozen=True)
class CanaryReport:
    report: Report
    workers: tuple[str, ...]
    since: float
    until: float
    notes: tuple[str, ...]
    unattributed: TaskTally

    def section(self) -> dict[str, Any]:
        """Extra to the report schema: where the verdicts came from."""
        def iso(t: float) -> str:
            return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(
                timespec="seconds")

        return {"workers": list(self.workers), "since": iso(self.since),
                "until": iso(self.until), "notes": list(self.notes),
                "unattributed": self.unattributed.to_dict()}


def _classification(tally: TaskTally) -> Classification:
    errors = [f for f in tally.findings if f.severity == "error"]
    if any(f.kind == "cpu-bound" for f in errors):
        return "cpu"
    return "io" if tally.runs else "unknown"


def _task(name: str, tally: TaskTally) -> TaskReport:
    findings = tuple(tally.findings)
    mean_wall = round(tally.wall_ms_total / tally.runs, 2) if tally.runs else 0.0
    stall_ms = max((f.duration_ms or 0.0 for f in findings
                    if f.kind in ("blocking-call", "cpu-bound")), default=0.0)
    stats = Stats(runs=tally.runs, wall_ms=mean_wall, cpu_ms=0.0, max_block_ms=stall_ms)
    if not tally.runs and not findings:
        return TaskReport(name, tally.queue, "skipped", "unknown", "either", stats,
                          reason="not certified: no canaried worker ran it")
    classification = _classification(tally)
    if any(f.severity == "error" for f in findings):
        return TaskReport(name, tally.queue, "no-go", classification,
                          recommend(classification, list(findings)), stats, findings)
    if tally.runs and tally.failed == tally.runs:
        return TaskReport(name, tally.queue, "error", classification, "either", stats,
                          findings, reason="not certified: every run the canary saw failed")
    return TaskReport(name, tally.queue, "go", classification,
                      recommend(classification, list(findings)), stats, findings)


def build(summaries: list[dict[str, Any]]) -> CanaryReport:
    """The report of every worker's latest summary (``_store.read``)."""
    usable = [s for s in summaries if s.get("schema") == SCHEMA]
    notes = [f"{s.get('worker')}: summary in an unknown format, left out"
             for s in summaries if s.get("schema") != SCHEMA]
    tallies: dict[str, TaskTally] = {}
    unattributed = TaskTally()
    for summary in usable:
        for name, data in (summary.get("tasks") or {}).items():
            tally = TaskTally.from_dict(data)
            tallies[name] = tallies[name].merged_with(tally) if name in tallies else tally
        if summary.get("unattributed"):
            unattributed = unattributed.merged_with(
                TaskTally.from_dict(summary["unattributed"]))
    thresholds = {float(s.get("threshold_ms", 50.0)) for s in usable}
    warns = {float(s.get("warn_ms", 10.0)) for s in usable}
    if len(thresholds) > 1 or len(warns) > 1:
        notes.append("the workers used different thresholds: "
                     f"{', '.join(f'{t:g} ms' for t in sorted(thresholds))}")
    if unattributed.stalls:
        notes.append(f"{unattributed.stalls} stall(s) were seen in no task's code "
                     f"(worst {unattributed.worst_stall_ms:g} ms): {UNATTRIBUTED} in the "
                     "metrics")
    first = usable[0] if usable else {}
    settings = Settings(threshold_ms=max(thresholds, default=50.0),
                        warn_ms=max(warns, default=10.0),
                        concurrency=max((int(s.get("concurrency") or 1) for s in usable),
                                        default=1),
                        mode="worker", runs=sum(t.runs for t in tallies.values()))
    environment = Environment(python=str(first.get("python", "?")),
                              gevent=str(first.get("gevent", "?")),
                              celery=first.get("celery"),
                              patched=all(bool(s.get("patched")) for s in usable))
    report = Report(
        tool_version=_version.__version__,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        app=first.get("app"), settings=settings, environment=environment,
        tasks=tuple(_task(name, tally) for name, tally in sorted(tallies.items())))
    return CanaryReport(
        report, tuple(str(s.get("worker")) for s in usable),
        min((float(s.get("started", 0)) for s in usable), default=0.0),
        max((float(s.get("updated", 0)) for s in usable), default=0.0),
        tuple(notes), unattributed)
