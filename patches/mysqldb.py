"""mysqlclient blocks in C; PyMySQL speaks the same API over patched sockets."""

from __future__ import annotations

import sys


def patch_mysqldb() -> None:
    """Make ``import MySQLdb`` give PyMySQL. Must run before anything imports MySQLdb."""
    try:
        import pymysql
    except ImportError as exc:
        raise ImportError(
            "the mysqldb shim needs PyMySQL: pip install 'geventcheck[mysql]'"
        ) from exc
    loaded = sys.modules.get("MySQLdb")
    if loaded is not None and loaded is not pymysql:
        raise ImportError(
            "MySQLdb (mysqlclient) was imported before the shim ran: apply it first"
        )
    pymysql.install_as_MySQLdb()


def is_patched() -> bool:
    pymysql = sys.modules.get("pymysql")
    return pymysql is not None and sys.modules.get("MySQLdb") is pymysql
