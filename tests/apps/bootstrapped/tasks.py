"""psycopg2 and MySQLdb imported at the top, as apps do: the bootstrap must come first."""

import os
import sys
import time

import MySQLdb
import psycopg2
import psycopg2.extensions

from .celery import app

PG = {
    "host": os.environ.get("PGHOST", "127.0.0.1"),
    "port": int(os.environ.get("PGPORT", "5432")),
    "user": os.environ.get("PGUSER", "postgres"),
    "dbname": os.environ.get("PGDATABASE", "test"),
}


@app.task
def slow_query(seconds: float) -> list[float]:
    """Wall-clock start and end of one slow query, to see whether copies overlapped."""
    start = time.time()
    conn = psycopg2.connect(**PG)
    try:
        cur = conn.cursor()
        cur.execute("SELECT pg_sleep(%s)", (seconds,))
        cur.fetchall()
    finally:
        conn.close()
    return [start, time.time()]


@app.task
def state() -> dict[str, object]:
    """What the worker process looks like from inside a task."""
    from gevent import monkey
    from geventcheck.patches import redis as redis_shim

    callback = psycopg2.extensions.get_wait_callback()
    return {
        "patched": monkey.is_module_patched("socket"),
        "wait_callback": getattr(callback, "__module__", None),
        "mysqldb_is_pymysql": MySQLdb is sys.modules.get("pymysql"),
        "redis_limit": redis_shim.limit(),
        "pid": os.getpid(),
    }
