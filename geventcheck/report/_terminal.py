"""The terminal view: one row per task, then the evidence for every no-go."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .._model import Finding, Process, Report, TaskReport

_VERDICT_STYLE = {"go": "bold green", "no-go": "bold red", "skipped": "yellow", "error": "magenta"}


def _reason(task: TaskReport) -> str:
    if task.reason:
        return task.reason
    top = task.top_finding
    if top is None:
        return ""
    where = f" at {top.where}" if top.where else ""
    return f"{top.kind}{where}"


def _classification(task: TaskReport) -> str:
    """``io`` tasks say what they waited on when it was a mocked service."""
    if task.classification in ("io", "mixed") and task.services:
        return f"{task.classification}: {', '.join(task.services)}"
    return task.classification


def _evidence(task: TaskReport, finding: Finding) -> Text:
    text = Text()
    style = {"error": "red", "warning": "yellow", "info": "dim"}[finding.severity]
    text.append(f"  {finding.severity:<7} {finding.kind}", style=style)
    if finding.count > 1:
        text.append(f" x{finding.count}")
    if finding.where:
        text.append(f"  {finding.where}", style="cyan")
    text.append(f"\n          {finding.message}")
    if finding.fix:
        text.append("\n          fix: ", style="bold")
        text.append(finding.fix)
    return text


def outcome_lines(task: TaskReport, report: Report) -> list[str]:
    """``published 3: proj.add → celery`` for each kind of message one run sent, and retries."""
    how = "sent to the broker" if report.settings.allow_publish else "captured, not sent"
    lines = [f"published {count}: {key}  [{how}]" for key, count in task.published.items()]
    if task.retried:
        runs = "run" if task.retried == 1 else "runs"
        lines.append(f"retried: {task.retried} {runs} ended in self.retry(), an outcome as on "
                     "a worker, not a failure (the retry message is counted above)")
    return lines


def _process(process: Process) -> str:
    """``subprocess 6 times: ls / (exit code 0) at app/tasks.py:12``."""
    parts = []
    if process.errors:
        parts.append("could not be started: " + "; ".join(process.errors))
    if process.exit_codes:
        parts.append("exit code " + ", ".join(str(c) for c in process.exit_codes))
    if process.running:
        parts.append(f"{process.running} still running when the task ended")
    if process.not_waited:
        parts.append(f"{process.not_waited} not waited for (exit code unknown)")
    times = f"{process.count} times" if process.count > 1 else "once"
    where = f" at {process.file}:{process.line}" if process.file else ""
    return f"{process.how} {times}: {process.command} ({'; '.join(parts)}){where}"


def _shims(report: Report) -> list[RenderableType]:
    """``--with-shims``: each re-audited task, before → after."""
    from .._shimaudit import rows

    section = report.shims
    if section is None:
        return []
    applied = ", ".join(f"geventcheck.patches.{s}" for s in section.applied) or "none"
    out: list[RenderableType] = [Text(f"\nshims applied ({', '.join(section.requested)}): "
                                      f"{applied}", style="bold")]
    if section.note:
        out.append(Text(f"  {section.note}", style="dim"))
    for outcome, row in zip(section.outcomes, rows(section), strict=True):
        out.append(Text(f"  {row}", style=_VERDICT_STYLE[outcome.after]))
    return out


def render_table(report: Report, *, verbose: bool = False) -> RenderableType:
    table = Table(title="geventcheck: is each task safe on a gevent worker?", title_justify="left")
    table.add_column("task", overflow="fold")
    table.add_column("queue")
    table.add_column("verdict")
    table.add_column("class")
    table.add_column("pool")
    table.add_column("longest stall", justify="right")
    table.add_column("top reason", overflow="fold")
    for task in report.tasks:
        table.add_row(
            task.name, task.queue or "-", Text(task.verdict, style=_VERDICT_STYLE[task.verdict]),
            _classification(task), "-" if task.not_certified else task.recommended_pool,
            f"{task.stats.max_block_ms:g} ms" if task.stats.max_block_ms else "-",
            Text(_reason(task)),  # a Text: brackets in a reason are not markup
        )
    parts: list[RenderableType] = [table]
    for task in report.tasks:
        rank = {"error": 0, "warning": 1, "info": 2}
        shown = sorted((f for f in task.findings
                        if verbose or f.severity != "info" or task.verdict == "skipped"),
                       key=lambda f: rank[f.severity])
        processes = task.processes if verbose else ()
        if not shown and not processes and not task.reason and not task.published \
                and not task.retried:
            continue
        parts.append(Text(f"\n{task.name}  [{task.verdict}]", style=_VERDICT_STYLE[task.verdict]))
        if task.reason:
            parts.append(Text(f"  {task.reason}", style=_VERDICT_STYLE[task.verdict]))
        parts.extend(_evidence(task, f) for f in shown)
        parts.extend(Text(f"  {line}", style="dim") for line in outcome_lines(task, report))
        parts.extend(Text(f"  process  {_process(p)}", style="dim") for p in processes)
    summary = report.summary()
    line = Text("\n")
    for key in ("go", "no-go", "skipped", "error"):
        line.append(f"{summary[key]} {key}", style=_VERDICT_STYLE[key])
        line.append("   ")
    line.append(f"{summary['not_run']} of {len(report.tasks)} not run, "
                f"{summary['not_certified']} not certified   ",
                style="yellow" if summary["not_certified"] else "dim")
    env = report.environment
    line.append(f"(patched: {'yes' if env.patched else 'NO'}, concurrency "
                f"{report.settings.concurrency}, threshold {report.settings.threshold_ms:g} ms)",
                style="dim")
    parts.append(line)
    parts += _shims(report)
    drivers = [d for d in env.drivers if d.status in ("blocking", "unknown")]
    from ..patches import DRIVER_SHIMS

    applied = set(report.shims.applied) if report.shims else set()
    for d in drivers:
        shim = DRIVER_SHIMS.get(d.name)
        if shim in applied:  # the before state: its fix was just proven above
            parts.append(Text(f"driver {d.name} {d.version or ''}: {d.status} without shims; "
                              f"geventcheck.patches.{shim} fixes it (see above)", style="dim"))
            continue
        parts.append(Text(f"driver {d.name} {d.version or ''}: {d.status} ({d.detail})"
                          + (f"; fix: {d.fix}" if d.fix else ""), style="yellow"))
    return Group(*parts)
