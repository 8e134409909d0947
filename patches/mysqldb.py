"""mysqlclient blocks in C; PyMySQL speaks the same API over patched sockets.

``patch()`` makes ``import MySQLdb`` give PyMySQL, with the version attributes Django's
MySQL backend checks, so it must run before anything imports MySQLdb.
"""

from __future__ import annotations

import sys

# Django's MySQL backend refuses a MySQLdb older than this (Django 5.x: mysqlclient 2.2.1).
DJANGO_NEEDS = (2, 2, 1, "final", 0)

MESSAGES = {
    "missing": "the mysqldb shim needs PyMySQL: pip install 'geventcheck[mysql]'",
    "no-hook": "PyMySQL {version} has no install_as_MySQLdb(); the mysqldb shim needs "
               "PyMySQL >= 0.7",
    "too-late": "MySQLdb is already imported and is mysqlclient {version} (from {file}): the "
                "mysqldb shim must run before anything imports MySQLdb (put "
                "geventcheck.patches.bootstrap(app) at the top of celery.py, before Django or "
                "the tasks are imported)",
}


def patch() -> None:
    """Install PyMySQL as MySQLdb; idempotent; refuses when mysqlclient is already loaded."""
    try:
        import pymysql
    except ImportError as exc:
        raise ImportError(MESSAGES["missing"]) from exc
    if not hasattr(pymysql, "install_as_MySQLdb"):
        raise ImportError(MESSAGES["no-hook"].format(version=getattr(pymysql, "__version__", "?")))
    loaded = sys.modules.get("MySQLdb")
    if loaded is not None and loaded is not pymysql:
        raise ImportError(MESSAGES["too-late"].format(
            version=_version_of(loaded), file=getattr(loaded, "__file__", "?")))
    if tuple(getattr(pymysql, "version_info", ())[:3]) < DJANGO_NEEDS[:3]:
        # Old PyMySQL reports mysqlclient 1.3/1.4, which Django refuses; it speaks the API.
        pymysql.version_info = DJANGO_NEEDS
        pymysql.__version__ = ".".join(str(p) for p in DJANGO_NEEDS[:3])
    pymysql.install_as_MySQLdb()


def _version_of(module: object) -> str:
    """mysqlclient has version_info but no __version__."""
    version = getattr(module, "__version__", None)
    if version is None:
        version = ".".join(str(p) for p in getattr(module, "version_info", ("?",))[:3])
    return str(version)


def unpatch() -> None:
    """Forget the PyMySQL alias (modules that imported MySQLdb keep what they got)."""
    if is_applied():
        for name in [n for n in sys.modules if n == "MySQLdb" or n.startswith("MySQLdb.")]:
            del sys.modules[name]


def is_applied() -> bool:
    """True when ``import MySQLdb`` gives PyMySQL."""
    pymysql = sys.modules.get("pymysql")
    return pymysql is not None and sys.modules.get("MySQLdb") is pymysql


patch_mysqldb = patch
is_patched = is_applied
