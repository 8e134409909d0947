"""The migration plan: per queue, which pool, what concurrency, which worker command.

Concurrency for a gevent worker comes from the measured runs of the queue's
tasks. One process keeps one core busy while about ``1 + wait / cpu`` tasks
wait on I/O, so

    concurrency = clamp(ceil(1 + W / C), 10, 200)

with W and C the median wait (wall - cpu) and CPU time per task of the queue.
Prefork queues get one process per core.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
from dataclasses import dataclass, field

from ._model import Report, TaskReport

MIN_GEVENT, MAX_GEVENT = 10, 200
FORMULA = "concurrency = clamp(ceil(1 + W / C), 10, 200), W and C the median wait and CPU ms"


@dataclass(frozen=True)
class QueuePlan:
    queue: str
    pool: str  # gevent or prefork
    concurrency: int
    tasks: tuple[TaskReport, ...]
    command: str
    why: str


@dataclass(frozen=True)
class Plan:
    queues: tuple[QueuePlan, ...]
    # task name -> new queue, for queues that mixed CPU and I/O tasks
    routes: dict[str, str] = field(default_factory=dict)
    first: tuple[TaskReport, ...] = ()  # no-go tasks on queues that could go to gevent
    # tasks the audit did not certify: never routed, since nothing is known about them
    not_certified: tuple[TaskReport, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {
            "formula": FORMULA,
            "queues": [
                {"queue": q.queue, "pool": q.pool, "concurrency": q.concurrency,
                 "tasks": [t.name for t in q.tasks], "command": q.command, "why": q.why}
                for q in self.queues
            ],
            "task_routes": {name: {"queue": queue} for name, queue in self.routes.items()},
            "fix_first": [t.name for t in self.first],
            "not_certified": [{"task": t.name, "queue": t.queue or "celery",
                               "reason": t.reason or t.verdict} for t in self.not_certified],
        }


def _belongs_on_gevent(task: TaskReport) -> bool:
    return task.verdict == "go" and task.recommended_pool in ("gevent", "either")


def _gevent_concurrency(tasks: list[TaskReport]) -> int:
    measured = [t for t in tasks if t.stats.runs]
    if not measured:
        return MIN_GEVENT
    wait = statistics.median(max(t.stats.wall_ms - t.stats.cpu_ms, 0.0) for t in measured)
    cpu = statistics.median(max(t.stats.cpu_ms, 0.1) for t in measured)
    return max(MIN_GEVENT, min(MAX_GEVENT, math.ceil(1 + wait / cpu)))


def _command(app: str, pool: str, concurrency: int, queue: str) -> str:
    return f"celery -A {app} worker --pool={pool} --concurrency={concurrency} -Q {queue}"


def make_plan(report: Report) -> Plan:
    """Split each queue into what can run on gevent now and what stays on prefork."""
    app = report.app or "proj"
    cores = os.cpu_count() or 1
    by_queue: dict[str, list[TaskReport]] = {}
    for task in report.tasks:
        by_queue.setdefault(task.queue or "celery", []).append(task)
    queues: list[QueuePlan] = []
    routes: dict[str, str] = {}
    first: list[TaskReport] = []
    unknown: list[TaskReport] = []
    for queue, queued in sorted(by_queue.items()):
        tasks = [t for t in queued if not t.not_certified]
        uncertified = [t for t in queued if t.not_certified]
        unknown += uncertified
        if not tasks:
            continue  # nothing known about this queue: no pool to name
        io = [t for t in tasks if _belongs_on_gevent(t)]
        rest = [t for t in tasks if not _belongs_on_gevent(t)]
        first += [t for t in rest if t.verdict == "no-go" and t.classification != "cpu"]
        if io and rest:  # mixed: the I/O tasks keep the queue, the others move
            moved = f"{queue}_prefork"
            routes.update({t.name: moved for t in rest})
            queues.append(_gevent_queue(app, queue, io))
            queues.append(QueuePlan(moved, "prefork", cores, tuple(rest),
                                    _command(app, "prefork", cores, moved),
                                    "split off: CPU-bound or not yet safe on gevent"))
        elif io:
            queues.append(_gevent_queue(app, queue, io))
        else:
            cpu = all(t.classification == "cpu" for t in rest)
            queues.append(QueuePlan(queue, "prefork", cores, tuple(rest),
                                    _command(app, "prefork", cores, queue),
                                    "CPU-bound work: one process per core" if cpu
                                    else "no task of this queue is safe on gevent yet"))
    if unknown:
        queues = [_warn_uncertified(q, [t for t in unknown if (t.queue or "celery") == q.queue])
                  for q in queues]
    return Plan(tuple(queues), routes, tuple(first), tuple(unknown))


def _warn_uncertified(plan: QueuePlan, unknown: list[TaskReport]) -> QueuePlan:
    """A queue's worker runs every task routed to it, certified or not: say so."""
    if not unknown or plan.pool != "gevent":
        return plan
    names = ", ".join(t.name for t in unknown)
    return dataclasses.replace(plan, why=f"{plan.why}; certify first, this worker would also "
                                         f"run tasks not certified: {names}")


def _gevent_queue(app: str, queue: str, tasks: list[TaskReport]) -> QueuePlan:
    concurrency = _gevent_concurrency(tasks)
    return QueuePlan(queue, "gevent", concurrency, tuple(tasks),
                     _command(app, "gevent", concurrency, queue),
                     "every task go and waiting on I/O")


def render_markdown(report: Report, plan: Plan) -> str:
    """The plan for operations, as Markdown."""
    lines = [f"# Moving `{report.app}` to gevent workers", "",
             f"Audited {len(report.tasks)} tasks with geventcheck {report.tool_version} on "
             f"{report.created}"
             + (f"; {len(plan.not_certified)} of them not certified (see below)."
                if plan.not_certified else "."), "", "## Queues", "",
             "| queue | pool | concurrency | tasks |", "|---|---|---:|---|"]
    for q in plan.queues:
        names = ", ".join(f"`{t.name}` ({t.classification}, {t.verdict})" for t in q.tasks)
        lines.append(f"| `{q.queue}` | {q.pool} | {q.concurrency} | {names} |")
    lines += ["", f"Concurrency: {FORMULA}; prefork gets one process per core.", "",
              "## Worker commands", "", "```sh"]
    lines += [q.command for q in plan.queues]
    lines += ["```", "", "Each gevent command passes `--pool=gevent` on the command line, so "
              "Celery monkey-patches the worker before the app loads (check with "
              "`geventcheck doctor`)."]
    if plan.routes:
        lines += ["", "## New routes", "", "```python", "task_routes = {"]
        lines += [f'    "{name}": {{"queue": "{queue}"}},' for name, queue in plan.routes.items()]
        lines += ["}", "```"]
    if plan.not_certified:
        lines += ["", "## Not certified", "", "The audit knows nothing about these yet, so the "
                  "plan neither moves nor routes them; a worker of their queue still runs them. "
                  "Audit them before switching that queue to gevent.", ""]
        lines += [f"- `{t.name}` (queue `{t.queue or 'celery'}`): {t.reason or t.verdict}"
                  for t in plan.not_certified]
    if plan.first:
        lines += ["", "## Fix first", ""]
        for t in plan.first:
            top = t.top_finding
            where = f" at {top.where}" if top and top.where else ""
            detail = f": {top.kind}{where}. {top.fix or ''}" if top else ""
            lines.append(f"- `{t.name}`{detail}".rstrip())
    lines += _shim_lines(report)
    return "\n".join(lines) + "\n"


def _shim_lines(report: Report) -> list[str]:
    """``--with-shims``: what was applied, each task before → after, and the line to add."""
    from .patches import BOOTSTRAP_LINE

    section = report.shims
    if section is None:
        return []
    modules = ", ".join(f"`geventcheck.patches.{s}`" for s in section.applied) or "none"
    lines = ["", "## Shims", "", f"Applied ({', '.join(section.requested)}): {modules}."]
    if section.note:
        lines += ["", section.note + "."]
    if section.outcomes:
        lines += ["", "| task | without shims | with shims |", "|---|---|---|"]
        lines += [f"| `{o.task}` | {o.before_reason} | {o.after_reason or o.after} |"
                  for o in section.outcomes]
    if any(o.fixed for o in section.outcomes):
        lines += ["", "To get the same on the workers, add one line to the app's `celery.py`, "
                  "right after the app is created; it applies these shims on gevent workers "
                  "only and does nothing on prefork:", "", "```python",
                  "import geventcheck.patches", BOOTSTRAP_LINE, "```"]
    return lines
