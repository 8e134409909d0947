"""Context variables set outside the task: invisible in a gevent task's greenlet."""

from contextvars import ContextVar

from .celery_app import app

TENANT: ContextVar[str] = ContextVar("tenant")
TENANT.set("acme")  # at import: only the worker's own context has it

DEFAULT_TENANT = "acme"


@app.task
def tenant_from_context():
    return TENANT.get("<no tenant>")


@app.task
def tenant_passed_explicitly(tenant=DEFAULT_TENANT):
    return tenant
