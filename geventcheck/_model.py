"""The report model: plain dataclasses that mirror ``report.schema.json``.

Detectors and the runner produce these; renderers turn them into text. Keys
that the schema spells with a dash (``no-go``) are mapped in ``to_dict``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

Severity = Literal["error", "warning", "info"]
Verdict = Literal["go", "no-go", "skipped", "error"]
Classification = Literal["io", "cpu", "mixed", "light", "unknown"]
Pool = Literal["gevent", "prefork", "either"]
DriverStatus = Literal["cooperative", "blocking", "shimmed", "unknown"]


@dataclasses.dataclass(frozen=True)
class Finding:
    kind: str
    severity: Severity
    message: str
    file: str | None = None
    line: int | None = None
    function: str | None = None
    duration_ms: float | None = None
    cpu_ms: float | None = None
    native: str | None = None
    endpoint: str | None = None
    stack: tuple[str, ...] = ()
    fix: str | None = None
    count: int = 1
    phase: str | None = None
    service: str | None = None
    # a stall that was not the task's doing: "garbage-collection" or "geventcheck"
    cause: str | None = None
    # which measured run saw it (the child numbers them), for the reproduction rule
    run: int | None = None
    # a stall's wall time as the hub lived it, when duration_ms leaves out a busy
    # machine's share or a garbage collection
    wall_ms: float | None = None

    @property
    def where(self) -> str:
        if self.file is None:
            return ""
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in fields}
        kwargs["stack"] = tuple(kwargs.get("stack") or ())
        return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class Stats:
    runs: int = 0
    wall_ms: float = 0.0
    cpu_ms: float = 0.0
    max_block_ms: float = 0.0
    concurrent_wall_ms: float | None = None


@dataclasses.dataclass(frozen=True)
class Process:
    """A command a task started (``"processes"`` of a task in the JSON report)."""

    command: str
    how: str  # "subprocess", "os.system", "os.spawnv", "os.fork", "multiprocessing", ...
    count: int = 1
    exit_codes: tuple[int, ...] = ()  # distinct exit codes seen; negative: killed by signal
    running: int = 0  # still running when the task ended
    not_waited: int = 0  # started without waiting (os.fork, posix_spawn): exit code unknown
    errors: tuple[str, ...] = ()  # could not be started
    file: str | None = None
    line: int | None = None
    function: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Process:
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in fields}
        kwargs["exit_codes"] = tuple(kwargs.get("exit_codes") or ())
        kwargs["errors"] = tuple(kwargs.get("errors") or ())
        return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class TaskReport:
    name: str
    queue: str | None
    verdict: Verdict
    classification: Classification
    recommended_pool: Pool
    stats: Stats
    findings: tuple[Finding, ...] = ()
    # requests each mocked service received while this task ran
    services: dict[str, int] = dataclasses.field(default_factory=dict)
    # why the task was not certified (not run, egress refused, every run failed)
    reason: str | None = None
    # task messages one run published, by "<task> → <queue>" (captured unless allowed)
    published: dict[str, int] = dataclasses.field(default_factory=dict)
    retried: int = 0  # runs that ended in self.retry(): an outcome, not a failure

    # processes the task started, one entry per command and line
    processes: tuple[Process, ...] = ()

    @property
    def not_certified(self) -> bool:
        """Not seen to be safe nor unsafe: its pool recommendation means nothing."""
        return self.verdict in ("skipped", "error")

    @property
    def top_finding(self) -> Finding | None:
        """The finding a reader should see first: most severe, then longest."""
        rank = {"error": 0, "warning": 1, "info": 2}
        judged = [f for f in self.findings if f.kind != "warm-up"]
        if not judged:
            return None
        return min(judged, key=lambda f: (rank[f.severity], -(f.duration_ms or 0.0)))


@dataclasses.dataclass(frozen=True)
class Driver:
    name: str
    status: DriverStatus
    version: str | None = None
    detail: str | None = None
    fix: str | None = None


@dataclasses.dataclass(frozen=True)
class Environment:
    python: str
    gevent: str
    patched: bool
    celery: str | None = None
    django: str | None = None
    drivers: tuple[Driver, ...] = ()
    imported_before_patch: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Settings:
    threshold_ms: float = 50.0
    warn_ms: float = 10.0
    concurrency: int = 4
    task_timeout_s: float = 30.0
    runs: int = 3
    mode: Literal["inprocess", "worker"] = "worker"
    shims: tuple[str, ...] = ()
    explore: int = 0
    explore_seed: int = 0
    allow_publish: bool = False
    shuffle: int | None = None  # seed of the task order; None: name order
    sandbox: bool = False  # the audited process tree in a network namespace of its own
    shard: str | None = None  # "I/N" of `audit --shard`; None: every task (or merged shards)


@dataclasses.dataclass(frozen=True)
class ShimOutcome:
    """One task audited without and then with the shims its drivers need."""

    task: str
    shims: tuple[str, ...]
    before: Verdict
    before_reason: str
    after: Verdict
    after_reason: str | None = None

    @property
    def fixed(self) -> bool:
        return self.before == "no-go" and self.after == "go"


@dataclasses.dataclass(frozen=True)
class ShimSection:
    """What ``--with-shims`` asked for, what it applied, and each re-audited task."""

    requested: tuple[str, ...]
    applied: tuple[str, ...]
    outcomes: tuple[ShimOutcome, ...] = ()
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class Report:
    tool_version: str
    created: str
    app: str | None
    settings: Settings
    environment: Environment
    tasks: tuple[TaskReport, ...]
    shims: ShimSection | None = None

    def summary(self) -> dict[str, int]:
        """Counts per verdict, and how many tasks were not run or not certified."""
        counts = {"go": 0, "no-go": 0, "skipped": 0, "error": 0}
        for task in self.tasks:
            counts[task.verdict] += 1
        counts["not_run"] = counts["skipped"]
        counts["not_certified"] = sum(t.not_certified for t in self.tasks)
        return counts

    @property
    def certified_nothing(self) -> bool:
        """No task ran: a go would be a claim about nothing."""
        return all(t.verdict == "skipped" for t in self.tasks)

    @property
    def exit_code(self) -> int:
        """0 only when at least one task ran and every task that ran is go."""
        ran = [t for t in self.tasks if t.verdict != "skipped"]
        return 0 if ran and all(t.verdict == "go" for t in ran) else 1


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def finding_to_dict(finding: Finding) -> dict[str, Any]:
    data = dataclasses.asdict(finding)
    data["stack"] = list(finding.stack)
    return data


def report_to_dict(report: Report) -> dict[str, Any]:
    """The JSON document of ``report.schema.json`` (version 1)."""
    settings = report.settings
    env = report.environment
    return {
        "schema": "geventcheck/report-v1",
        "tool": {"name": "geventcheck", "version": report.tool_version},
        "created": report.created,
        "app": report.app,
        "settings": {
            "threshold_ms": settings.threshold_ms,
            "warn_ms": settings.warn_ms,
            "concurrency": settings.concurrency,
            "mode": settings.mode,
            "shims": list(settings.shims),
            "task_timeout_s": settings.task_timeout_s,
            "runs": settings.runs,
            "explore": settings.explore,
            "explore_seed": settings.explore_seed,
            "allow_publish": settings.allow_publish,
            "shuffle": settings.shuffle,
            "sandbox": settings.sandbox,
            **({"shard": settings.shard} if settings.shard else {}),
        },
        "environment": {
            "python": env.python,
            "gevent": env.gevent,
            "celery": env.celery,
            "django": env.django,
            "patched": env.patched,
            "drivers": [
                {**_drop_none(dataclasses.asdict(d)), "version": d.version} for d in env.drivers
            ],
            "imported_before_patch": list(env.imported_before_patch),
        },
        "tasks": [
            {
                "name": t.name,
                "queue": t.queue,
                "verdict": t.verdict,
                "classification": t.classification,
                "recommended_pool": t.recommended_pool,
                "stats": _drop_none(dataclasses.asdict(t.stats)),
                "findings": [finding_to_dict(f) for f in t.findings],
                "services": dict(t.services),
                # extra to the schema: the pool above is no recommendation when true
                "not_certified": t.not_certified,
                **({"reason": t.reason} if t.reason else {}),
                "published": dict(t.published),
                "retried": t.retried,
                "processes": [_drop_none(dataclasses.asdict(p)) for p in t.processes],
            }
            for t in report.tasks
        ],
        "summary": report.summary(),
        # extra to the schema: --with-shims, each task's verdict before and after its shims
        **({"shims": shims_to_dict(report.shims)} if report.shims is not None else {}),
    }


def shims_to_dict(section: ShimSection) -> dict[str, Any]:
    return {
        "requested": list(section.requested),
        "applied": list(section.applied),
        **({"note": section.note} if section.note else {}),
        "tasks": [
            {"name": o.task, "shims": list(o.shims),
             "modules": [f"geventcheck.patches.{s}" for s in o.shims],
             "before": {"verdict": o.before, "reason": o.before_reason},
             "after": {"verdict": o.after, "reason": o.after_reason}, "fixed": o.fixed}
            for o in section.outcomes
        ],
    }
