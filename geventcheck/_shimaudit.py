"""``--with-shims``: which shims the audit applies, which tasks it audits again, and the
before → after story per task.

A task is audited again only when it was no-go because of a library a chosen shim fixes
(an ``unsafe-driver`` finding naming it, or redis's "Too many connections"), in a second
child process with the shims applied before the app is imported, as a bootstrapped
worker has them.
"""

from __future__ import annotations

import dataclasses
import re

from ._model import Driver, Finding, Report, ShimOutcome, ShimSection, TaskReport
from .patches import DRIVER_SHIMS, SHIMS

AUTO = "auto"

MESSAGES = {
    "unknown": "--with-shims: unknown shim {name!r}; give 'auto' or names from: {known}",
    "empty": "--with-shims: expected 'auto' or a comma-separated list of shims, got {value!r}",
    "none-needed": "the driver inventory found no library that a shim fixes",
    "no-shim": "no shim can fix {names}: see the driver's fix",
    "no-task": "no task was no-go because of {names}: nothing to audit again",
    "after-go": "go with {modules}",
    "after-other": "{verdict} with {modules}: {reason}",
    "before": "no-go: {driver} blocking{where}",
    "before-redis": "no-go: redis-py's pool raised \"Too many connections\" at concurrency "
                    "{concurrency}",
    "row": "{task}: {before} → {after}",
}

# The "Too many connections" a redis pool raises when it is smaller than the concurrency.
_REDIS_LIMIT = re.compile(r"Too many connections|MaxConnectionsError")


def parse(value: str) -> tuple[str, ...]:
    """``auto`` or ``psycopg2,mysqldb``; raises ValueError with one clear line."""
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if not names:
        raise ValueError(MESSAGES["empty"].format(value=value))
    if names == (AUTO,):
        return names
    for name in names:
        if name not in SHIMS:
            raise ValueError(MESSAGES["unknown"].format(name=name,
                                                        known=", ".join(sorted(SHIMS))))
    return names


def _driver_needs_shim(driver: Driver) -> bool:
    if driver.name == "redis":  # cooperative, but its pool may be too small: the fix says so
        return bool(driver.fix)
    return driver.status == "blocking"


def choose(requested: tuple[str, ...], report: Report) -> tuple[str, ...]:
    """The shims to apply: the named ones, or for ``auto`` one per library that needs it."""
    if requested != (AUTO,):
        names = list(requested)
    else:
        names = [DRIVER_SHIMS[d.name] for d in report.environment.drivers
                 if d.name in DRIVER_SHIMS and _driver_needs_shim(d)]
    already = set(report.settings.shims)
    return tuple(n for n in dict.fromkeys(names) if n not in already)


def _driver_of(finding: Finding) -> str | None:
    """``unsafe-driver`` messages start "<import name> blocks the hub" (detectors._stalls)."""
    return next((name for name in DRIVER_SHIMS
                 if finding.message.startswith(f"{name} blocks the hub")), None)


def shims_for(task: TaskReport, shims: tuple[str, ...]) -> tuple[str, ...]:
    """The chosen shims that this no-go task's findings blame, in order."""
    if task.verdict != "no-go":
        return ()
    blamed: list[str] = []
    for f in task.findings:
        if f.kind == "unsafe-driver" and (driver := _driver_of(f)) is not None:
            blamed.append(DRIVER_SHIMS[driver])
        elif f.kind == "task-error" and _REDIS_LIMIT.search(f.message):
            blamed.append("redis")
    return tuple(s for s in dict.fromkeys(blamed) if s in shims)


def before_text(task: TaskReport, concurrency: int | None = None) -> str:
    """``no-go: psycopg2 blocking in poll()``: the driver and what it waited in."""
    if any(f.kind == "task-error" and _REDIS_LIMIT.search(f.message) for f in task.findings):
        return MESSAGES["before-redis"].format(concurrency=concurrency or "?")
    for f in task.findings:
        if f.kind == "unsafe-driver" and f.severity == "error":
            syscall = re.search(r"\bin (?:the )?(\w+)(?: syscall|\(\))", f.native or f.message)
            waiting = re.search(r"waiting in (\w+)", f.native or f.message)
            word = (waiting or syscall)
            where = f" in {word.group(1)}()" if word else ""
            return MESSAGES["before"].format(driver=_driver_of(f) or "a driver", where=where)
    top = task.top_finding
    return f"no-go: {top.kind}: {top.message}" if top else "no-go"


def escape_glob(name: str) -> str:
    """A task name as an fnmatch pattern that matches only itself."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def outcomes(before: Report, after: Report, plan: dict[str, tuple[str, ...]]) -> \
        list[ShimOutcome]:
    by_name = {t.name: t for t in after.tasks}
    concurrency = before.settings.concurrency
    out = []
    for task in before.tasks:
        shims = plan.get(task.name)
        if not shims:
            continue
        again = by_name.get(task.name)
        modules = ", ".join(f"geventcheck.patches.{s}" for s in shims)
        if again is None:
            out.append(ShimOutcome(task.name, shims, task.verdict,
                                   before_text(task, concurrency), "skipped", "not run again"))
            continue
        if again.verdict == "go":
            reason = MESSAGES["after-go"].format(modules=modules)
        else:
            top = again.top_finding
            why = again.reason or (f"{top.kind}: {top.message}" if top else again.verdict)
            reason = MESSAGES["after-other"].format(verdict=again.verdict, modules=modules,
                                                    reason=why)
        out.append(ShimOutcome(task.name, shims, task.verdict, before_text(task, concurrency),
                               again.verdict, reason))
    return out


def merge(before: Report, after: Report | None, section: ShimSection) -> Report:
    """The report with each re-audited task as it is with its shims; the section keeps
    the verdict it had without them."""
    if after is None:
        return dataclasses.replace(before, shims=section)
    again = {t.name: t for t in after.tasks}
    said = {o.task: o for o in section.outcomes}
    tasks = []
    for task in before.tasks:
        new = again.get(task.name)
        if new is None or task.name not in said:
            tasks.append(task)
            continue
        o = said[task.name]
        note = f"{o.after_reason} (without: {o.before_reason})"
        tasks.append(dataclasses.replace(new, reason=new.reason or note))
    return dataclasses.replace(before, tasks=tuple(tasks), shims=section)


def rows(section: ShimSection) -> list[str]:
    """One line per re-audited task, for the terminal and the Markdown plan."""
    return [MESSAGES["row"].format(task=o.task, before=o.before_reason,
                                   after=o.after_reason or o.after) for o in section.outcomes]


def none_needed_note(applied: tuple[str, ...]) -> str:
    if not applied:
        return MESSAGES["none-needed"]
    return MESSAGES["no-task"].format(names=", ".join(applied))


def unshimmable_note(report: Report) -> str | None:
    """Blocking libraries no shim fixes (psycopg 3 imported too early, pylibmc...)."""
    names = [d.name for d in report.environment.drivers
             if d.status == "blocking" and d.name not in DRIVER_SHIMS]
    return MESSAGES["no-shim"].format(names=", ".join(names)) if names else None


def join_notes(*notes: str | None) -> str | None:
    said = [n for n in notes if n]
    return "; ".join(said) if said else None
