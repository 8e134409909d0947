"""Shims that make blocking libraries cooperate with gevent, one module per library.

Each module has ``patch()`` (idempotent; a clear ``ImportError`` naming the version when
its hook point is missing or it is too late) and ``is_applied()``; the ``patch_<lib>()``
names of 0.1 still work. Installed as ``geventcheck.patches``. In a Celery app, one line
applies what the app needs on gevent workers only: ``geventcheck.patches.bootstrap(app)``.
The audit proves them with ``--with-shims auto`` (or ``--shim NAME``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

from ._bootstrap import bootstrap
from .offload import offload, run_blocking

# shim name -> (module, function): the names users pass to --shim and --with-shims.
SHIMS: dict[str, tuple[str, str]] = {
    "psycopg2": ("geventcheck.patches.psycopg2", "patch_psycopg2"),
    "mysqldb": ("geventcheck.patches.mysqldb", "patch_mysqldb"),
    "grpc": ("geventcheck.patches.grpc", "patch_grpc"),
    "redis": ("geventcheck.patches.redis", "patch_redis"),
    "psycopg": ("geventcheck.patches.psycopg", "patch_psycopg"),
}

# The driver inventory's names (geventcheck.detectors._drivers) -> the shim that fixes it.
DRIVER_SHIMS: dict[str, str] = {
    "psycopg2": "psycopg2",
    "MySQLdb": "mysqldb",
    "grpc": "grpc",
    "redis": "redis",
}

# What each shim does, in a few words, for fixes and reports.
WHAT = {
    "psycopg2": "psycogreen's wait callback, so libpq waits yield to the hub",
    "mysqldb": "PyMySQL installed as MySQLdb (pure Python, patched sockets)",
    "grpc": "grpc.experimental.gevent.init_gevent(), before any channel exists",
    "redis": "a blocking connection pool sized for the worker's concurrency",
    "psycopg": "a check that psycopg chose its cooperative wait (the fix is the import order)",
}

BOOTSTRAP_LINE = "geventcheck.patches.bootstrap(app)"

MESSAGES = {
    "unknown": "unknown shim {name!r}; known: {known}",
}


def module_name(name: str) -> str:
    """``geventcheck.patches.psycopg2`` for ``psycopg2``."""
    return SHIMS[name][0]


def line_for(name: str) -> str:
    """The exact line that applies one shim by hand, right after gevent patches (it binds
    only ``geventcheck``: the app's own ``psycopg2`` or ``redis`` names stay untouched)."""
    return f"import geventcheck.patches.{name}; geventcheck.patches.{name}.patch()"


def fix_for(name: str) -> str:
    """The fix an unsafe-driver finding gives: the shim, its line, and how to prove it."""
    return (f"apply {module_name(name)} ({WHAT[name]}): add `import geventcheck.patches` and "
            f"`{BOOTSTRAP_LINE}` to celery.py right after the app is created (it applies the "
            f"shim on gevent workers only), or call `{line_for(name)}` right after patching; "
            f"prove it with geventcheck audit --with-shims auto (--shim {name})")


def _module(name: str) -> Any:
    if name not in SHIMS:
        raise ValueError(MESSAGES["unknown"].format(name=name, known=", ".join(sorted(SHIMS))))
    return importlib.import_module(SHIMS[name][0])


def apply(name: str, *, concurrency: int | None = None) -> None:
    """Apply the shim called ``name`` (see ``SHIMS``); ``concurrency`` sizes the redis pool."""
    module = _module(name)
    patch: Callable[..., None] = module.patch
    if name == "redis" and concurrency is not None:
        patch(concurrency=concurrency)
    else:
        patch()


def is_applied(name: str) -> bool:
    return bool(_module(name).is_applied())


def apply_all(names: Iterable[str], *, concurrency: int | None = None) -> list[str]:
    """Apply several shims, all or none: when one refuses, those already applied by this call
    are rolled back (where the library allows it) and the refusal is raised."""
    done: list[str] = []
    for name in names:
        was = is_applied(name) if name in SHIMS else False
        try:
            apply(name, concurrency=concurrency)
        except BaseException:
            for applied in reversed(done):
                unpatch = getattr(_module(applied), "unpatch", None)
                if unpatch is not None:
                    unpatch()
            raise
        if not was:
            done.append(name)
    return done


__all__ = ["BOOTSTRAP_LINE", "DRIVER_SHIMS", "SHIMS", "apply", "apply_all", "bootstrap",
           "fix_for", "is_applied", "line_for", "module_name", "offload", "run_blocking"]
