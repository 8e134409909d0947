"""From what was measured to what it means: verdict, classification, recommended pool.

Classification uses the median solo run: CPU share = cpu_ms / wall_ms, where wall_ms
leaves out the time the thread waited for a CPU (a busy machine, not the task).
  light  wall < 20 ms and no stall reached --warn-ms
  cpu    CPU share >= 0.6  (the task mostly computes)
  io     CPU share <= 0.3  (the task mostly waits)
  mixed  in between
"""

from __future__ import annotations

import dataclasses
import statistics

from ._model import Classification, Finding, Pool, Process, Stats, TaskReport, Verdict
from .detectors._stalls import merge
from .runner._parent import TaskRecord

LIGHT_WALL_MS = 20.0
CPU_SHARE = 0.6
IO_SHARE = 0.3

_STALL_KINDS = ("blocking-call", "cpu-bound")


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else 0.0


def classify(wall_ms: float, cpu_ms: float, max_block_ms: float, warn_ms: float,
             runs: int) -> Classification:
    if runs == 0:
        return "unknown"
    if wall_ms < LIGHT_WALL_MS and max_block_ms < warn_ms:
        return "light"
    share = cpu_ms / wall_ms if wall_ms > 0 else 0.0
    if share >= CPU_SHARE:
        return "cpu"
    if share <= IO_SHARE:
        return "io"
    return "mixed"


def recommend(classification: Classification, findings: list[Finding]) -> Pool:
    errors = [f for f in findings if f.severity == "error"]
    if classification == "cpu" or any(f.kind == "cpu-bound" for f in errors):
        return "prefork"
    if errors or classification == "unknown":
        # Not safe on gevent as it stands: stay on prefork until the findings are fixed.
        return "prefork"
    if classification == "light":
        return "either"
    return "gevent"


def _name_services(findings: list[Finding], services: dict[str, str]) -> list[Finding]:
    """Say which mocked service a blocked call waited on, not just its address."""
    named = []
    for finding in findings:
        name = services.get(finding.endpoint or "")
        if name and finding.endpoint:
            where = f"on {finding.endpoint}"
            named.append(dataclasses.replace(
                finding, service=name,
                message=finding.message.replace(where, f"{where} (service {name!r})")))
        else:
            named.append(finding)
    return named


def judge(rec: TaskRecord, warn_ms: float, services: dict[str, str] | None = None) -> TaskReport:
    """``services`` maps ``host:port`` of each mocked service to its name."""
    findings = _name_services(merge(rec.findings), services or {})
    runs = [r for r in rec.solo_runs if r.get("wall_ms") is not None]
    ok_runs = [r for r in runs if not r.get("error")]
    measured = ok_runs or runs
    wall = _median([r["wall_ms"] for r in measured])
    cpu = _median([r["cpu_ms"] for r in measured])
    # what the task itself spent, without the time a busy machine kept it off the CPU
    own_wall = _median([r["wall_ms"] - (r.get("queued_ms") or 0.0) for r in measured])
    max_block = max(
        (f.duration_ms or 0.0 for f in findings if f.kind in _STALL_KINDS), default=0.0
    )
    stats = Stats(runs=len(runs) + len(rec.concurrent_runs), wall_ms=wall, cpu_ms=cpu,
                  max_block_ms=round(max_block, 1),
                  concurrent_wall_ms=round(rec.concurrent_wall_ms, 2)
                  if rec.concurrent_wall_ms is not None else None)
    verdict: Verdict
    if not rec.runnable and not rec.started:
        verdict = "skipped"
        findings = [Finding(
            "task-error", "info",
            f"not run: it needs arguments ({', '.join(rec.required)}); give it inputs in a "
            "scenario file (--scenario) to audit it")]
        classification: Classification = "unknown"
    else:
        classification = classify(own_wall, cpu, max_block, warn_ms, len(runs))
        all_failed = bool(runs) and not ok_runs
        if any(f.severity == "error" for f in findings):
            verdict = "no-go"
        elif all_failed or not runs:
            verdict = "error"
        else:
            verdict = "go"
    return TaskReport(rec.name, rec.queue, verdict, classification,
                      recommend(classification, findings), stats, tuple(findings),
                      services=dict(sorted(rec.service_calls.items())),
                      processes=tuple(Process.from_dict(p) for p in rec.processes))
