"""geventcheck: is this Celery task safe to run on a gevent worker?

Kept import-light on purpose: the audited child imports this package right
after ``gevent.monkey.patch_all()``, so the heavier parts of the public API
(the audit, the doctor, the plan) load only when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._model import (
    Driver,
    Environment,
    Finding,
    Report,
    Settings,
    ShimOutcome,
    ShimSection,
    Stats,
    TaskReport,
    report_to_dict,
)
from ._version import __version__

if TYPE_CHECKING:
    from ._audit import AuditPlan, run_audit
    from ._doctor import Diagnosis, diagnose
    from ._plan import Plan, make_plan, render_markdown
    from ._scenario import Scenario, load_scenario

_LAZY = {
    "AuditPlan": "._audit", "run_audit": "._audit",
    "Diagnosis": "._doctor", "diagnose": "._doctor",
    "Plan": "._plan", "make_plan": "._plan", "render_markdown": "._plan",
    "Scenario": "._scenario", "load_scenario": "._scenario",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'geventcheck' has no attribute {name!r}")


__all__ = [
    "AuditPlan",
    "Diagnosis",
    "Driver",
    "Environment",
    "Finding",
    "Plan",
    "Report",
    "Scenario",
    "Settings",
    "ShimOutcome",
    "ShimSection",
    "Stats",
    "TaskReport",
    "__version__",
    "diagnose",
    "load_scenario",
    "make_plan",
    "render_markdown",
    "report_to_dict",
    "run_audit",
]
