"""A scenario run inside a real ``celery worker`` process, as the audit's child runs it.

The scenario's services are started on loopback, ``[env]`` is rendered with their values,
the mock CA is trusted, names such as ``api.openai.com`` are mapped to their mock, and the
egress guard is installed at interpreter start (the ``sitecustomize`` of
``detectors/_children.child_guard_env``), so the worker, its prefork children (forked with
the guard in place) and any Python process a task starts reach loopback and the allowed
endpoints only. ``[settings]`` is applied after ``django.setup()`` by
``geventcheck._workerinit``, a module the worker imports with ``-I``.

Each run gets a fresh ``TMPDIR``: projects that keep a throwaway database there (ExamX's
SQLite, migrated and filled by its ``worker_init``) start every run from the same state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ._scenario import Scenario
from .services import HttpService, RunningServices, Service

SETTINGS_ENV = "GEVENTCHECK_WORKER_SETTINGS"
INIT_MODULE = "geventcheck._workerinit"


@dataclass(frozen=True)
class WorkerEnvironment:
    """What a worker process needs to run the scenario: environment, folder, ``-I`` modules."""

    env: dict[str, str]
    cwd: str | None
    includes: tuple[str, ...]
    guard_report: str  # JSON lines: every connection the guard refused in a worker
    services_pid: int | None = None  # the mock services' host process, while it runs

    def for_run(self, tmpdir: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of one worker, with its own fresh ``TMPDIR``."""
        return {**self.env, "TMPDIR": tmpdir, **(extra or {})}

    def refused(self) -> list[str]:
        """``host:port (kind) at file:line`` for each refused connection so far."""
        try:
            with open(self.guard_report, encoding="utf-8") as fh:
                lines = [json.loads(line) for line in fh if line.strip()]
        except (OSError, ValueError):
            return []
        return sorted({f"{e['host']}:{e['port']} ({e['kind']}) at {e.get('file')}:"
                       f"{e.get('line')}" for e in lines})


def with_latency(services: Sequence[Service], latency_ms: float | None) -> tuple[Service, ...]:
    """The services with every HTTP route (not the fallback) answering after exactly
    ``latency_ms``, without jitter."""
    if latency_ms is None:
        return tuple(services)
    out: list[Service] = []
    for service in services:
        if isinstance(service, HttpService):
            routes = tuple(dataclasses.replace(r, latency_ms=latency_ms, jitter_ms=0)
                           for r in service.routes)
            out.append(dataclasses.replace(service, routes=routes))
        else:
            out.append(service)
    return tuple(out)


def _base_environment() -> dict[str, str]:
    from ._doctorlive import dropped_environment

    dropped = set(dropped_environment())
    return {k: v for k, v in os.environ.items() if k not in dropped}


@contextlib.contextmanager
def scenario_worker(scenario: Scenario | None, tmp: str, *, app_dir: str | None = None,
                    django_settings: str | None = None,
                    allowed: Sequence[tuple[str, int | None]] = (),
                    latency_ms: float | None = None) -> Iterator[WorkerEnvironment]:
    """Start the scenario's services and yield the environment of workers that use them.

    ``allowed``: endpoints beyond loopback the worker may reach (the broker, when remote).
    The services stop when the block ends; stop the workers first.
    """
    from .detectors._children import child_guard_env

    services = with_latency(scenario.services if scenario else (), latency_ms)
    with RunningServices(services, tmp) as running:
        values = running.template_values()
        host_map = {host.lower(): running.endpoints[s.name]
                    for s in services for host in getattr(s, "hosts", ())}
        report = os.path.join(tmp, "worker-egress.jsonl")
        endpoints = [(e.host, e.port) for e in running.endpoints.values()]
        allow = [*(scenario.allow if scenario else ()), *allowed, *endpoints]
        guard = child_guard_env(allow, {h: e.host for h, e in host_map.items()},
                                {h: e.port for h, e in host_map.items()}, report)
        site_dir, *rest = guard["PYTHONPATH"].split(os.pathsep)
        workdir = (scenario.workdir if scenario else None) or app_dir
        paths = [p for p in (workdir, *(scenario.paths if scenario else ())) if p]
        env = _base_environment()
        env |= scenario.rendered_env(values) if scenario else {}
        env |= running.client_env()
        env |= {**guard, "PYTHONPATH": os.pathsep.join([site_dir, *map(os.path.abspath, paths),
                                                         *rest])}
        settings_module = django_settings or (scenario.django_settings if scenario else None)
        if settings_module:
            env["DJANGO_SETTINGS_MODULE"] = settings_module
        overrides = scenario.rendered_settings(values) if scenario else {}
        env[SETTINGS_ENV] = json.dumps(overrides)
        yield WorkerEnvironment(env, workdir, (INIT_MODULE,), report, running.pid)
