"""Which customer (school) the current request or task works for.

The web app sets it per request in a middleware; workers of a single-tenant
deployment set it once, when the worker starts (see examx/celery.py).
"""

from contextvars import ContextVar

_tenant: ContextVar[str | None] = ContextVar("examx_tenant", default=None)


def activate(name):
    return _tenant.set(name)


def brand():
    """The school name mails are signed with; ExamX itself when no tenant is active."""
    return _tenant.get() or "ExamX"
