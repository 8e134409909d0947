"""The per-greenlet result backend: one setting that every task on a gevent worker pays for.

Celery keeps the app's result backend in a ``threading.local`` unless the backend
says it is thread-safe (``result_backend_thread_safe``, default False, read with
``conf.get`` because Celery does not declare it). Patched, that local is per
greenlet, and the gevent pool runs every task in a new greenlet: each task builds its
own backend (for Redis its own connection pool and a new connection), even when it
ignores its result, because the tracer calls ``backend.process_cleanup()`` after every
task. Reported once per app, not blamed on each task.
"""

from __future__ import annotations

from typing import Any

KIND = "result-backend"
FIX = "set result_backend_thread_safe = True in the Celery configuration"
MESSAGE = (
    "result_backend_thread_safe is False (Celery's default): on a gevent worker every "
    "task greenlet builds its own {backend} ({detail}), which adds milliseconds to every "
    "task"
)
_REDIS = "its own Redis connection pool, so a new connection per task"
_DETAIL = {
    "redis": _REDIS,
    "rediss": _REDIS,
    "sentinel": _REDIS,
    "db": "its own SQLAlchemy engine, so a new database connection per task",
    "rpc": "its own result consumer and pending-results state",
}
_DEFAULT_DETAIL = "its own client for the result store"


def setting(app: Any, name: str, default: Any = None) -> Any:
    """A setting as Celery itself reads it, declared or not.

    Settings Celery defines as properties (``result_backend`` also reads
    ``CELERY_RESULT_BACKEND`` from the environment) are read through them; any other
    name goes through ``conf.get``, which applies the app's namespace (Django's
    ``CELERY_`` prefix) and the old upper-case names, as Celery's own code does.
    """
    conf = app.conf
    if isinstance(getattr(type(conf), name, None), property):
        value = getattr(conf, name)
        return default if value is None else value
    return conf.get(name, default)


def backend_name(app: Any) -> tuple[str | None, str] | None:
    """(URL scheme or alias, class name) of the app's result backend; None when disabled.

    Resolved the way ``Celery._get_backend`` does, from the class given to ``Celery(...)``
    or the ``result_backend`` setting, without importing or building the backend.
    """
    spec = app.backend_cls or setting(app, "result_backend")
    if not spec:
        return None
    if not isinstance(spec, str):
        cls_name = getattr(spec, "__name__", repr(spec))
        return None if cls_name == "DisabledBackend" else (None, cls_name)
    from celery.app.backends import BACKEND_ALIASES

    alias = spec.partition("://")[0].partition("+")[0] if "://" in spec else spec
    if alias.lower() == "disabled":
        return None
    # "module:Class" as given, or an alias; an unknown URL scheme is named as written
    target = BACKEND_ALIASES.get(alias.lower()) or (f"{alias} backend" if "://" in spec else spec)
    return alias.lower(), target.rpartition(":")[2].rpartition(".")[2] or target


def backend_problem(app: Any) -> str | None:
    """What is wrong when each task greenlet builds the result backend anew, or None."""
    name = backend_name(app)
    if name is None or setting(app, "result_backend_thread_safe", False):
        return None
    alias, cls_name = name
    return MESSAGE.format(backend=cls_name, detail=_DETAIL.get(alias or "", _DEFAULT_DETAIL))


def per_greenlet_backend(app: Any) -> str | None:
    """The one note for the audit: the problem and its fix, or None when there is none."""
    problem = backend_problem(app)
    return f"{problem}; fix: {FIX}" if problem else None
