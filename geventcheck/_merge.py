"""``geventcheck report --merge``: the reports of one sharded audit as one report.

Pure logic, no printing. The shards must be one audit split N ways: the same app
and settings, every shard once. Anything else would make a report whose verdicts
do not describe one audit, so it is refused with one line. Summary and plan are
computed by the renderers from the merged tasks, as for any report.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

from ._gate import GateError, read_report
from ._model import Driver, Environment, Report
from ._shard import parse as parse_shard

MESSAGES = {
    "no_reports": "give the reports to merge: geventcheck report --merge A.json B.json ...",
    "app": "{path}: audits app {app!r}, {first} audits {first_app!r}: merge the shards of one "
           "audit",
    "settings": "{path}: audited with other settings than {first} ({diff}): merge the shards "
                "of one audit",
    "bad_shard": "{path}: shard {shard!r} in the report: {error}",
    "mixed": "{path}: {what}, {first} {other}: merge the shards of one `audit --shard` run",
    "count": "{path}: shard {shard} of {count}, {first} is of {first_count}: merge the shards of "
             "one `audit --shard I/N` run",
    "twice": "shard {shard} given twice ({a} and {b})",
    "missing": "shard(s) {missing} of {count} missing: merge every shard's report, or the "
               "merged report would leave their tasks out",
    "overlap": "task {task!r} is in both {a} and {b}: these reports overlap",
    "versions": "the shards ran on different {what}: {values}",
    "shims": "{path}: its --with-shims section (before/after) is not merged; read it in that "
             "report",
}


class MergeError(GateError):
    """Reports that are not the shards of one audit; the message is one line."""


@dataclass(frozen=True)
class Merged:
    report: Report
    notes: tuple[str, ...]
    sources: tuple[str, ...]
    shards: int | None  # N when the inputs were the N shards of one audit


def _settings_diff(a: Report, b: Report) -> str:
    first = dataclasses.asdict(dataclasses.replace(a.settings, shard=None))
    other = dataclasses.asdict(dataclasses.replace(b.settings, shard=None))
    return ", ".join(f"{k} {other[k]!r} vs {first[k]!r}" for k in first if first[k] != other[k])


def _check_shards(named: list[tuple[str, Report]]) -> int | None:
    """N when every input is one distinct shard of N; None when none is sharded."""
    first_path, first = named[0]
    seen: dict[int, str] = {}
    count: int | None = None
    for path, report in named:
        if (report.settings.shard is None) != (first.settings.shard is None):
            sharded, whole = (path, first_path) if report.settings.shard else (first_path, path)
            raise MergeError(MESSAGES["mixed"].format(
                path=sharded, what="is one shard", first=whole, other="is a whole audit"))
        if report.settings.shard is None:
            continue
        try:
            shard = parse_shard(report.settings.shard)
        except ValueError as exc:
            raise MergeError(MESSAGES["bad_shard"].format(
                path=path, shard=report.settings.shard, error=exc)) from None
        if count is None:
            count = shard.count
        elif shard.count != count:
            raise MergeError(MESSAGES["count"].format(
                path=path, shard=shard.index, count=shard.count, first=first_path,
                first_count=count))
        if shard.index in seen:
            raise MergeError(MESSAGES["twice"].format(shard=shard, a=seen[shard.index], b=path))
        seen[shard.index] = path
    if count is not None and len(seen) != count:
        missing = ", ".join(f"{i}/{count}" for i in range(1, count + 1) if i not in seen)
        raise MergeError(MESSAGES["missing"].format(missing=missing, count=count))
    return count


def _environment(named: list[tuple[str, Report]], notes: list[str]) -> Environment:
    """One environment: patched only if every shard was, every driver any shard loaded (a
    blocking status sticks), and a note when the shards ran on different versions."""
    envs = [r.environment for _p, r in named]
    for what in ("python", "gevent", "celery", "django"):
        values = sorted({str(getattr(e, what)) for e in envs})
        if len(values) > 1:
            notes.append(MESSAGES["versions"].format(what=what, values=", ".join(values)))
    drivers: dict[str, Driver] = {}
    for env in envs:
        for driver in env.drivers:
            if driver.name not in drivers or drivers[driver.name].status != "blocking":
                drivers[driver.name] = driver
    return dataclasses.replace(
        envs[0], patched=all(e.patched for e in envs),
        drivers=tuple(sorted(drivers.values(), key=lambda d: d.name)),
        imported_before_patch=tuple(sorted({m for e in envs for m in e.imported_before_patch})))


def _has_shim_section(path: str) -> bool:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    return isinstance(data, dict) and "shims" in data


def merge_files(paths: list[str]) -> Merged:
    """The merged report of these files; MergeError (one line) when they are not the shards
    of one audit, GateError when one is not a report."""
    if not paths:
        raise MergeError(MESSAGES["no_reports"])
    named = [(os.path.basename(p) if len({os.path.basename(q) for q in paths}) == len(paths)
              else p, read_report(p)) for p in paths]
    first_path, first = named[0]
    for path, report in named[1:]:
        if report.app != first.app:
            raise MergeError(MESSAGES["app"].format(path=path, app=report.app, first=first_path,
                                                    first_app=first.app))
        if diff := _settings_diff(first, report):
            raise MergeError(MESSAGES["settings"].format(path=path, first=first_path,
                                                         diff=diff))
    count = _check_shards(named)
    owner: dict[str, str] = {}
    tasks = []
    for path, report in named:
        for task in report.tasks:
            if task.name in owner:
                raise MergeError(MESSAGES["overlap"].format(task=task.name, a=owner[task.name],
                                                            b=path))
            owner[task.name] = path
            tasks.append(task)
    notes: list[str] = []
    environment = _environment(named, notes)
    versions = sorted({r.tool_version for _p, r in named})
    if len(versions) > 1:
        notes.append(MESSAGES["versions"].format(what="geventcheck versions",
                                                 values=", ".join(versions)))
    notes += [MESSAGES["shims"].format(path=name) for (name, _r), p in zip(named, paths,
                                                                           strict=True)
              if _has_shim_section(p)]
    merged = dataclasses.replace(
        first, created=max(r.created for _p, r in named),
        settings=dataclasses.replace(first.settings, shard=None), environment=environment,
        tasks=tuple(sorted(tasks, key=lambda t: t.name)), shims=None)
    return Merged(merged, tuple(notes), tuple(n for n, _r in named), count)
