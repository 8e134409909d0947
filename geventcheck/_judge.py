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
from .detectors._stalls import merge, merge_key
from .runner._parent import TaskRecord

LIGHT_WALL_MS = 20.0
CPU_SHARE = 0.6
IO_SHARE = 0.3

_STALL_KINDS = ("blocking-call", "cpu-bound")
_JUDGED_STALL_KINDS = ("blocking-call", "cpu-bound", "unsafe-driver")
# A stall within this share of the threshold, either side, makes the verdict borderline.
BORDERLINE = 0.2


def reproduced(findings: list[Finding]) -> list[Finding]:
    """An error-level stall counts only when it showed up again: in two measured runs or
    more (the audit adds confirmation runs when only one run showed it). One that did not
    reproduce becomes a warning that says so."""
    runs = {f.run for f in findings if f.run is not None and f.phase != "warm-up"}
    seen: dict[tuple[object, ...], set[int]] = {}
    for f in findings:
        if f.kind in _JUDGED_STALL_KINDS and f.severity == "error" and f.cause is None \
                and f.run is not None:
            seen.setdefault(merge_key(f), set()).add(f.run)
    out = []
    for f in findings:
        hits = seen.get(merge_key(f))
        if hits is not None and len(hits) < 2 <= len(runs) and f.severity == "error":
            out.append(dataclasses.replace(f, severity="warning", message=(
                f"{f.message}; seen in {len(hits)} of {len(runs)} measured runs and not "
                "again, so not judged an error (a busy machine or a one-off)")))
        else:
            out.append(f)
    return out


def borderline(findings: list[Finding], threshold_ms: float) -> Finding | None:
    """An info finding when the worst stall is close enough to the threshold to tip."""
    stalls = [f for f in findings if f.kind in _STALL_KINDS and f.cause is None
              and f.severity != "info" and f.duration_ms is not None]
    if not stalls:
        return None
    worst = max(stalls, key=lambda f: f.duration_ms or 0.0)
    margin = (worst.duration_ms or 0.0) - threshold_ms
    if abs(margin) > BORDERLINE * threshold_ms:
        return None
    side = "over" if margin > 0 else "under"
    kind = worst.kind  # the stall kinds, checked against the declared list by the tests
    return Finding(
        kind, "info",
        f"borderline: the worst stall, {worst.duration_ms:g} ms, is {abs(margin):.1f} ms "
        f"{side} the {threshold_ms:g} ms threshold; a slower or busier machine may tip "
        "this verdict", file=worst.file, line=worst.line, function=worst.function,
        duration_ms=worst.duration_ms, cause="borderline")


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


def judge(rec: TaskRecord, warn_ms: float, services: dict[str, str] | None = None,
          threshold_ms: float = 50.0) -> TaskReport:
    """``services`` maps ``host:port`` of each mocked service to its name."""
    findings = _name_services(merge(reproduced(rec.findings)), services or {})
    if (close := borderline(findings, threshold_ms)) is not None:
        findings.append(close)
    runs = [r for r in rec.solo_runs if r.get("wall_ms") is not None]
    ok_runs = [r for r in runs if not r.get("error")]
    measured = ok_runs or runs
    wall = _median([r["wall_ms"] for r in measured])
    cpu = _median([r["cpu_ms"] for r in measured])
    # what the task itself spent, without the time a busy machine kept it off the CPU
    # and without the time geventcheck's monitor held the GIL to look at it
    own_wall = _median([r["wall_ms"] - (r.get("queued_ms") or 0.0)
                        - (r.get("overhead_ms") or 0.0) for r in measured])
    max_block = max(
        (f.duration_ms or 0.0 for f in findings
         if f.kind in _STALL_KINDS and f.cause is None and f.phase != "warm-up"), default=0.0
    )
    stats = Stats(runs=len(runs) + len(rec.concurrent_runs), wall_ms=wall, cpu_ms=cpu,
                  max_block_ms=round(max_block, 1),
                  concurrent_wall_ms=round(rec.concurrent_wall_ms, 2)
                  if rec.concurrent_wall_ms is not None else None)
    verdict: Verdict
    reason: str | None = None
    classification: Classification = "unknown"
    if not rec.started:
        verdict, reason = "skipped", _not_run_reason(rec)
    else:
        classification = classify(own_wall, cpu, max_block, warn_ms, len(runs))
        findings = [_refused(f) if f.kind == "egress" else f for f in findings]
        refused = [f for f in findings if f.kind == "egress"]
        # every measured run, solo and concurrent, failed: nothing about it was certified
        measured_runs = runs + [r for r in rec.concurrent_runs if r.get("wall_ms") is not None]
        all_failed = bool(measured_runs) and all(r.get("error") for r in measured_runs)
        if any(f.kind == "crash" and f.cause == "geventcheck" for f in findings):
            verdict, reason = "error", ("not certified: geventcheck itself failed while this "
                                        "task ran (see the crash finding)")
        elif any(f.severity == "error" for f in findings):
            verdict = "no-go"
        elif refused:
            verdict, reason = "error", _egress_reason(refused)
        elif all_failed or not runs:
            verdict, reason = "error", _failed_reason(findings, bool(runs))
        else:
            verdict = "go"
    # A task that was not certified gets no recommendation: "either" keeps the field valid
    # and the report's not_certified flag says to read it as none.
    pool: Pool = "either" if verdict in ("skipped", "error") else recommend(
        classification, findings)
    return TaskReport(rec.name, rec.queue, verdict, classification, pool, stats,
                      tuple(findings), services=dict(sorted(rec.service_calls.items())),
                      reason=reason, published=dict(sorted(rec.published.items())),
                      retried=rec.retries,
                      processes=tuple(Process.from_dict(p) for p in rec.processes))


def _not_run_reason(rec: TaskRecord) -> str:
    if not rec.runnable:
        return (f"not run: it needs arguments ({', '.join(rec.required)}); give it inputs in a "
                "scenario file (--scenario) to audit it")
    return "not run: the audit ended before it reached this task"


def _refused(finding: Finding) -> Finding:
    """A refused connection says nothing about gevent: it blocks certification, not the pool."""
    return dataclasses.replace(finding, severity="warning") if finding.severity == "error" \
        else finding


def _egress_reason(refused: list[Finding]) -> str:
    hosts = sorted({f.endpoint for f in refused if f.endpoint})
    where = ", ".join(hosts) or "an outside address"
    return f"not certified: egress to {where} refused; fake it in the scenario, or allow it"


def _failed_reason(findings: list[Finding], ran: bool) -> str:
    if not ran:
        return "not certified: no run finished"
    errors = [f.message for f in findings if f.kind == "task-error"]
    return "not certified: every run failed" + (f" ({errors[0]})" if errors else "")
