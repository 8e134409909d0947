"""One audit from start to finish: the fake services, the audited child, the verdicts.

The CLI, the Celery command and the Django command all call ``run_audit``; only
they print.
"""

from __future__ import annotations

import dataclasses
import datetime
import tempfile
from dataclasses import dataclass
from typing import Any

from . import _version
from ._judge import judge
from ._model import Report, Settings, ShimSection
from ._scenario import Scenario
from .runner._parent import Auditor, AuditRun, Callbacks, count_service_calls
from .services import RunningServices


@dataclass(frozen=True)
class AuditPlan:
    """What to audit and how, once the command line and the scenario are merged."""

    app: str
    settings: Settings
    django_settings: str | None = None
    workdir: str | None = None
    globs: tuple[str, ...] = ()
    scenario: Scenario | None = None
    # --with-shims: ("auto",) or shim names; tasks no-go because of them are audited again
    with_shims: tuple[str, ...] = ()


def run_audit(plan: AuditPlan, callbacks: Callbacks | None = None) -> tuple[Report, list[str]]:
    """The report and the notes worth telling the user; raises AuditError,
    AuditInternalError (geventcheck's own fault), ServiceError."""
    from . import _shimaudit

    scenario = plan.scenario
    services = scenario.services if scenario else ()
    with tempfile.TemporaryDirectory(prefix="geventcheck-") as tmp, \
            RunningServices(services, tmp) as running:
        values = running.template_values()
        env = {**(scenario.rendered_env(values) if scenario else {}), **running.client_env()}
        host_map = {
            host: (running.endpoints[s.name].host, running.endpoints[s.name].port)
            for s in services for host in getattr(s, "hosts", ())
        }
        common: dict[str, Any] = {
            "django_settings": plan.django_settings, "workdir": plan.workdir,
            "scenario": scenario, "env": env,
            "django_overrides": scenario.rendered_settings(values) if scenario else {},
            "host_map": host_map, "callbacks": callbacks,
            "services": [(e.host, e.port) for e in running.endpoints.values()],
        }
        result = Auditor(plan.app, plan.settings, globs=plan.globs, **common).run()
        notes = list(result.notes)
        by_endpoint = {f"{e.host}:{e.port}": name for name, e in running.endpoints.items()}
        report = _report(plan, plan.settings, result, running.requests(), by_endpoint)
        if not plan.with_shims:
            return report, notes
        applied = _shimaudit.choose(plan.with_shims, report)
        redo = {t.name: names for t in report.tasks
                if (names := _shimaudit.shims_for(t, applied))}
        if not redo:
            # chosen but applied nowhere: no second audit ran
            section = ShimSection(plan.with_shims, (), note=_shimaudit.join_notes(
                _shimaudit.none_needed_note(applied), _shimaudit.unshimmable_note(report)))
            return _shimaudit.merge(report, None, section), notes
        shimmed = dataclasses.replace(plan.settings,
                                      shims=tuple(plan.settings.shims) + applied)
        again = Auditor(plan.app, shimmed,
                        globs=tuple(_shimaudit.escape_glob(n) for n in redo), **common).run()
        notes += [f"with shims: {n}" for n in again.notes if n not in notes]
        after = _report(plan, shimmed, again, running.requests(), by_endpoint)
    section = ShimSection(plan.with_shims, applied,
                          tuple(_shimaudit.outcomes(report, after, redo)),
                          note=_shimaudit.unshimmable_note(report))
    return _shimaudit.merge(report, after, section), notes


def _report(plan: AuditPlan, settings: Settings, result: AuditRun, log: list[dict[str, Any]],
            by_endpoint: dict[str, str]) -> Report:
    count_service_calls(result.tasks, log)
    return Report(
        tool_version=_version.__version__,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        app=plan.app, settings=settings, environment=result.environment,
        tasks=tuple(judge(rec, settings.warn_ms, by_endpoint,
                          threshold_ms=settings.threshold_ms) for rec in result.tasks),
    )
