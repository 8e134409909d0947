"""One audit from start to finish: the fake services, the audited child, the verdicts.

The CLI, the Celery command and the Django command all call ``run_audit``; only
they print.
"""

from __future__ import annotations

import datetime
import tempfile
from dataclasses import dataclass

from . import _version
from ._judge import judge
from ._model import Report, Settings
from ._scenario import Scenario
from .runner._parent import Auditor, Callbacks, count_service_calls
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


def run_audit(plan: AuditPlan, callbacks: Callbacks | None = None) -> tuple[Report, list[str]]:
    """The report and the notes worth telling the user; raises AuditError,
    AuditInternalError (geventcheck's own fault), ServiceError."""
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
        auditor = Auditor(
            plan.app, plan.settings, django_settings=plan.django_settings, globs=plan.globs,
            workdir=plan.workdir, scenario=scenario, env=env,
            django_overrides=scenario.rendered_settings(values) if scenario else {},
            host_map=host_map, callbacks=callbacks,
            services=[(e.host, e.port) for e in running.endpoints.values()],
        )
        result = auditor.run()
        log = running.requests()
        by_endpoint = {f"{e.host}:{e.port}": name for name, e in running.endpoints.items()}
    count_service_calls(result.tasks, log)
    report = Report(
        tool_version=_version.__version__,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        app=plan.app, settings=plan.settings, environment=result.environment,
        tasks=tuple(judge(rec, plan.settings.warn_ms, by_endpoint,
                                 threshold_ms=plan.settings.threshold_ms) for rec in result.tasks),
    )
    return report, result.notes
