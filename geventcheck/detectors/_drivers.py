"""Driver inventory: which loaded libraries cooperate with gevent, which block the hub.

Each check looks only at modules the app already imported (never imports one
itself) and answers from the library's own hooks: psycopg2's wait callback,
psycopg's chosen wait function, the MySQLdb module's real identity, and so on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

from .._model import Driver, DriverStatus
from ..patches import fix_for

# Libraries that block the hub in C, with the remedy. Keys are import names. Where a shim
# exists the fix names it and the exact line to add (geventcheck.patches.fix_for).
_OFFLOAD = ("wrap the blocking call with geventcheck.patches.run_blocking(fn, *args) (or the "
            "@geventcheck.patches.offload decorator): it runs in gevent's hub threadpool and "
            "the task waits cooperatively")
BLOCKING_FIXES = {
    "psycopg2": fix_for("psycopg2") + "; or move to psycopg 3 imported after patching",
    "MySQLdb": fix_for("mysqldb") + "; it must run before Django or the app imports MySQLdb",
    "grpc": fix_for("grpc") + "; it must run before any grpc channel or server is created",
    "pylibmc": f"use pymemcache (pure Python), or {_OFFLOAD}",
    "confluent_kafka": f"{_OFFLOAD} (produce/poll/flush), or route the task to a prefork queue",
    "pycurl": f"use requests, urllib3 or httpx (cooperative once patched), or {_OFFLOAD}",
    "oracledb": "use python-oracledb in thin mode (the default); thick mode blocks in C",
    "pyodbc": f"{_OFFLOAD}, or route the task to a prefork queue",
    "cassandra": "patch before importing cassandra so it picks its gevent reactor",
    "psycopg": "no shim can fix it, the fix is the import order: psycopg picks its wait "
    "function once, when psycopg.waiting is first imported, so import psycopg only after "
    "gevent.monkey.patch_all() (celery -A app worker -P gevent patches before loading the "
    "app; a custom entry point or a sitecustomize must not import psycopg or Django first), "
    "and do not set PSYCOPG_WAIT_FUNC=wait_c, so it picks a cooperative wait function",
}

_PIP_NAMES = {
    "psycopg2": ("psycopg2", "psycopg2-binary"),
    "psycopg": ("psycopg",),
    "MySQLdb": ("mysqlclient",),
    "pymysql": ("PyMySQL",),
    "redis": ("redis",),
    "grpc": ("grpcio",),
    "pylibmc": ("pylibmc",),
    "confluent_kafka": ("confluent-kafka",),
    "pycurl": ("pycurl",),
    "cassandra": ("cassandra-driver",),
    "oracledb": ("oracledb",),
    "pyodbc": ("pyodbc",),
    "requests": ("requests",),
    "urllib3": ("urllib3",),
    "httpx": ("httpx",),
}


def _version(name: str) -> str | None:
    module = sys.modules.get(name)
    for dist in _PIP_NAMES.get(name, (name,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    version = getattr(module, "__version__", None)
    return str(version).split()[0] if version else None


def _psycopg2(mod: Any, concurrency: int) -> Driver:
    ext = sys.modules.get("psycopg2.extensions")
    callback = ext.get_wait_callback() if ext is not None else None
    if callback is None:
        return Driver("psycopg2", "blocking", _version("psycopg2"),
                      "no wait callback: every query waits in libpq's poll() and blocks the hub",
                      BLOCKING_FIXES["psycopg2"])
    where = f"{getattr(callback, '__module__', '?')}.{getattr(callback, '__name__', '?')}"
    return Driver("psycopg2", "shimmed", _version("psycopg2"), f"wait callback {where}")


def _psycopg(mod: Any, concurrency: int) -> Driver:
    waiting = sys.modules.get("psycopg.waiting")
    wait = getattr(waiting, "wait", None)
    name = getattr(wait, "__name__", "unknown")
    if name == "wait_c":
        forced = os.environ.get("PSYCOPG_WAIT_FUNC")
        why = (f"PSYCOPG_WAIT_FUNC={forced} chose it" if forced
               else "psycopg was imported before patching")
        return Driver("psycopg", "blocking", _version("psycopg"),
                      f"uses the C wait function wait_c, which blocks the hub: {why}",
                      BLOCKING_FIXES["psycopg"])
    if wait is None:
        return Driver("psycopg", "unknown", _version("psycopg"), "psycopg.waiting not loaded")
    return Driver("psycopg", "cooperative", _version("psycopg"), f"wait function {name}")


def _mysqldb(mod: Any, concurrency: int) -> Driver:
    pymysql = sys.modules.get("pymysql")
    if pymysql is not None and mod is pymysql:
        return Driver("MySQLdb", "shimmed", _version("pymysql"),
                      "MySQLdb is PyMySQL (pymysql.install_as_MySQLdb())")
    return Driver("MySQLdb", "blocking", _version("MySQLdb"),
                  "mysqlclient waits for the server in C and blocks the hub",
                  BLOCKING_FIXES["MySQLdb"])


def _grpc(mod: Any, concurrency: int) -> Driver:
    cygrpc = sys.modules.get("grpc._cython.cygrpc")
    active = bool(cygrpc is not None and getattr(cygrpc, "g_gevent_activated", False))
    if active:
        return Driver("grpc", "shimmed", _version("grpc"), "init_gevent() was called")
    return Driver("grpc", "blocking", _version("grpc"), "init_gevent() was not called",
                  BLOCKING_FIXES["grpc"])


def _cassandra(mod: Any, concurrency: int) -> Driver:
    cluster = sys.modules.get("cassandra.cluster")
    conn = getattr(getattr(cluster, "Cluster", None), "connection_class", None)
    name = getattr(conn, "__name__", "unknown")
    status: DriverStatus = "cooperative" if "Gevent" in name else "blocking"
    return Driver("cassandra", status, _version("cassandra"), f"connection class {name}",
                  None if status == "cooperative" else BLOCKING_FIXES["cassandra"])


def _oracledb(mod: Any, concurrency: int) -> Driver:
    thin = getattr(mod, "is_thin_mode", lambda: True)()
    if thin:
        return Driver("oracledb", "cooperative", _version("oracledb"), "thin mode (pure Python)")
    return Driver("oracledb", "blocking", _version("oracledb"), "thick mode (Oracle Client in C)",
                  BLOCKING_FIXES["oracledb"])


def _redis(mod: Any, concurrency: int) -> Driver:
    import gc

    # The audit freezes what start-up left (gc.freeze, between runs), and get_objects() does
    # not list frozen objects: look at them too, then freeze them again.
    frozen = gc.get_freeze_count()
    if frozen:
        gc.unfreeze()
    try:
        small = sorted({
            pool.max_connections
            for pool in gc.get_objects()
            if type(pool).__name__ == "ConnectionPool"
            and type(pool).__module__.startswith("redis")
            and isinstance(getattr(pool, "max_connections", None), int)
            and pool.max_connections < concurrency
        })
    finally:
        if frozen:
            gc.freeze()
    if small:
        return Driver("redis", "cooperative", _version("redis"),
                      f"a ConnectionPool allows {small[0]} connections, fewer than the "
                      f"concurrency {concurrency}: extra greenlets raise 'Too many connections'",
                      fix_for("redis") + "; or use redis.BlockingConnectionPool or raise "
                      "max_connections")
    return Driver("redis", "cooperative", _version("redis"), "pure-Python sockets, patched")


def _blocking(name: str, detail: str) -> Callable[[Any, int], Driver]:
    def check(mod: Any, concurrency: int) -> Driver:
        return Driver(name, "blocking", _version(name), detail, BLOCKING_FIXES[name])

    return check


def _cooperative(name: str) -> Callable[[Any, int], Driver]:
    def check(mod: Any, concurrency: int) -> Driver:
        return Driver(name, "cooperative", _version(name), "pure-Python sockets, patched")

    return check


CHECKS: dict[str, Callable[[Any, int], Driver]] = {
    "psycopg2": _psycopg2,
    "psycopg": _psycopg,
    "MySQLdb": _mysqldb,
    "pymysql": _cooperative("pymysql"),
    "redis": _redis,
    "grpc": _grpc,
    "pylibmc": _blocking("pylibmc", "libmemcached does its socket I/O in C"),
    "confluent_kafka": _blocking("confluent_kafka", "librdkafka waits in C"),
    "pycurl": _blocking("pycurl", "libcurl does its socket I/O in C"),
    "cassandra": _cassandra,
    "oracledb": _oracledb,
    "pyodbc": _blocking("pyodbc", "ODBC drivers wait in C"),
    "requests": _cooperative("requests"),
    "urllib3": _cooperative("urllib3"),
    "httpx": _cooperative("httpx"),
}


def inventory(concurrency: int) -> list[Driver]:
    """One entry per known library that is loaded in this process."""
    found = []
    for name, check in CHECKS.items():
        mod = sys.modules.get(name)
        if mod is None:
            continue
        try:
            found.append(check(mod, concurrency))
        except Exception as exc:  # a broken library must not break the audit
            found.append(Driver(name, "unknown", None, f"could not inspect: {exc!r}"))
    return found


def blocking_driver_of(files: list[str], callee: str | None, blocking: set[str]) -> str | None:
    """The blocking driver (one of ``blocking``) a stalled stack is inside, if any."""
    for name in sorted(blocking):
        module = sys.modules.get(name)
        if module is None:
            continue
        if callee and (callee == name or callee.startswith(name + ".")):
            return name
        roots = tuple(p + "/" for p in getattr(module, "__path__", None) or ())
        if roots and any(f.startswith(roots) for f in files):
            return name
    return None
