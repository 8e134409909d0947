"""One line in the app's celery.py applies the shims the app needs, on gevent workers only.

``geventcheck.patches.bootstrap(app)`` acts at the earliest point where the pool is sure:
- when the module is imported by ``celery ... worker -P gevent`` (Celery patched the process
  before importing the app, from the same argv scan), it applies the shims right away, before
  the tasks' modules import their drivers;
- otherwise at ``worker_init`` (sent by every worker; ``worker_process_init`` never is on
  gevent), where the pool is known: gevent and patched, it applies them; gevent and not
  patched, it says so loudly (the shims cannot help an unpatched process); any other pool,
  it does nothing.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("geventcheck.bootstrap")

MESSAGES = {
    "unpatched": "geventcheck: this worker runs the gevent pool but the process is NOT "
                 "monkey-patched ({why}): tasks run one after another or hang, and no shim "
                 "can help. Start it with `celery -A APP worker -P gevent` (-P apart from its "
                 "value, on the command line; not CELERY_WORKER_POOL, worker_pool, "
                 "app.worker_main() or a custom entry point). Run `geventcheck doctor -A APP "
                 "-- worker ...` to see why.",
    "refused": "geventcheck: the {name} shim was NOT applied on this gevent worker: {error}",
    "applied": "geventcheck: gevent worker, shims applied: {names}",
    "unknown": "bootstrap(): unknown shim {name!r}; known: {known}",
}

_POOL_FLAGS = ("-P", "--pool")

# The environment variable that bootstraps every app the celery command loads, no code change.
ENV = "GEVENTCHECK_BOOTSTRAP"


@dataclass
class BootstrapState:
    """What ``bootstrap`` was asked, and what it did; the doctor reads it from the app."""

    shims: tuple[str, ...] | None  # None: auto
    file: str | None = None
    line: int | None = None
    applied: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    warned: bool = False
    via_env: bool = False  # GEVENTCHECK_BOOTSTRAP=1, not a line in the app


def _argv_pool(argv: list[str]) -> str | None:
    """The pool Celery's own patching scan reads (celery/__main__.py): -P X, -P=X, --pool X,
    --pool=X. An attached -PX is not read: Celery does not patch for it either."""
    for i, arg in enumerate(argv):
        if arg in _POOL_FLAGS and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(("--pool=", "-P=")):
            return arg.split("=", 1)[1]
    return None


def _argv_concurrency(argv: list[str]) -> int | None:
    for i, arg in enumerate(argv):
        value = None
        if arg in ("-c", "--concurrency") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--concurrency="):
            value = arg.split("=", 1)[1]
        elif arg.startswith("-c") and arg[2:].isdigit():
            value = arg[2:]
        if value is not None and value.isdigit():
            return int(value)
    return None


def _patched() -> bool:
    if "gevent.monkey" not in sys.modules:
        return False
    from gevent import monkey

    return bool(monkey.is_module_patched("socket"))


def _pool_name(pool_cls: Any) -> str | None:
    if pool_cls is None:
        return None
    if isinstance(pool_cls, str):
        return "gevent" if "gevent" in pool_cls else pool_cls
    module = getattr(pool_cls, "__module__", "") or ""
    return module.rsplit(".", 1)[-1] if module.startswith("celery.concurrency") else module


def needed(concurrency: int | None = None) -> list[str]:
    """Auto: a shim for every blocking library installed in this environment."""
    def has(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return module in sys.modules

    names = []
    if has("psycopg2"):
        names.append("psycopg2")
    if "MySQLdb" in sys.modules or has("MySQLdb"):
        names.append("mysqldb")
    if has("grpc"):
        names.append("grpc")
    if has("redis") and (concurrency is None or concurrency > 100):
        names.append("redis")
    if "psycopg" in sys.modules or has("psycopg"):
        names.append("psycopg")
    return names


def _apply(state: BootstrapState, concurrency: int | None, *, later: bool) -> None:
    """Apply each shim on its own: one refusal must not stop the others (nor the worker)."""
    from . import apply, is_applied

    names = list(state.shims) if state.shims is not None else needed(concurrency)
    for name in names:
        if name in state.applied or name in state.refused:
            continue
        size = concurrency
        if name == "redis" and size is None:
            if later:
                continue  # sized at worker_init, when the concurrency is known
            size = 100  # the worker would not say its concurrency: redis-py's default
        try:
            apply(name, concurrency=size)
        except (ImportError, ValueError) as exc:
            state.refused[name] = str(exc)
            log.error(MESSAGES["refused"].format(name=name, error=exc))
            continue
        if is_applied(name):
            state.applied.append(name)


def bootstrap(app: Any, shims: Iterable[str] | str = "auto", *,
              _via_env: bool = False) -> BootstrapState:
    """Apply the gevent shims this app needs when, and only when, it runs as a patched gevent
    worker; warn loudly when the pool is gevent but the process is not patched.

    ``shims``: ``"auto"`` (every blocking library installed) or names from
    ``geventcheck.patches.SHIMS``. Idempotent per app. Returns what it did (for the doctor).
    """
    from . import SHIMS

    existing = getattr(app, "_geventcheck_bootstrap", None)
    if isinstance(existing, BootstrapState):
        return existing
    names: tuple[str, ...] | None = None
    if not (isinstance(shims, str) and shims == "auto"):
        names = tuple([shims] if isinstance(shims, str) else shims)
        for name in names:
            if name not in SHIMS:
                raise ValueError(MESSAGES["unknown"].format(
                    name=name, known=", ".join(sorted(SHIMS))))
    if _via_env:
        state = BootstrapState(names, via_env=True)
    else:
        caller = inspect.stack(0)[1]
        state = BootstrapState(names, file=caller.filename, line=caller.lineno)
    app._geventcheck_bootstrap = state

    argv = list(sys.argv)
    early = _patched() and (
        ("worker" in argv and _argv_pool(argv) == "gevent")
        # geventcheck's audit child runs the app as a patched gevent worker does
        or "geventcheck.runner._child" in sys.modules)
    if early:
        _apply(state, _argv_concurrency(argv), later=True)

    from celery import signals

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        pool = _pool_name(getattr(sender, "pool_cls", None))
        if pool is None:
            pool = "gevent" if _patched() else _pool_name(
                app.conf.worker_pool or os.environ.get("CELERY_WORKER_POOL"))
        if pool != "gevent":
            return
        if not _patched():
            state.warned = True
            log.error(MESSAGES["unpatched"].format(why=_why_unpatched(argv)))
            return
        concurrency = getattr(sender, "concurrency", None)
        _apply(state, concurrency if isinstance(concurrency, int) else None, later=False)
        if state.applied:
            log.info(MESSAGES["applied"].format(names=", ".join(state.applied)))

    signals.worker_init.connect(on_worker_init, weak=False,
                                dispatch_uid=f"geventcheck.bootstrap.{id(app)}")
    return state


def _why_unpatched(argv: list[str]) -> str:
    attached = [a for a in argv if a.startswith("-P") and len(a) > 2]
    if attached:
        return f"{attached[0]!r} has its value attached, which Celery's patching scan misses"
    if os.environ.get("CELERY_WORKER_POOL") == "gevent" and _argv_pool(argv) is None:
        return "the pool comes from CELERY_WORKER_POOL, which Celery does not patch for"
    if _argv_pool(argv) is None and "worker" in argv:
        return "the pool comes from the configuration (worker_pool), not from -P"
    return "started without the celery command's -P gevent (worker_main() or a custom entry point)"


def env_enabled() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def install_env_hook() -> None:
    """``GEVENTCHECK_BOOTSTRAP=1``: bootstrap the app the celery command loads, when Celery
    is about to import its task modules (the ``import_modules`` signal), without a line in
    celery.py. Called when the celery command loads geventcheck's command plugin."""
    if not env_enabled():
        return
    from celery import signals

    def on_import_modules(sender: Any = None, **_: Any) -> None:
        if sender is not None:
            bootstrap(sender, _via_env=True)

    signals.import_modules.connect(on_import_modules, weak=False,
                                   dispatch_uid="geventcheck.bootstrap.env")
