"""Tasks that change process-wide hooks, and one whose verdict must not depend on them.

``a_installs_psycopg_hook`` does what many apps do in the wrong place: it calls
psycogreen's ``patch_psycopg()`` inside a task. Audited before it, after it, or
alone, ``b_queries_postgres`` blocks the hub in libpq and must be no-go.
The marker comments name the lines the tests expect in the findings.
"""

import json
import logging
import os
import socket

import gevent
import psycogreen.gevent
import psycopg2

from .celery import app

PG = {
    "host": os.environ.get("PGHOST", "127.0.0.1"),
    "port": int(os.environ.get("PGPORT", "5432")),
    "user": os.environ.get("PGUSER", "postgres"),
    "dbname": os.environ.get("PGDATABASE", "test"),
}
ORIGINAL_DUMPS = json.dumps


@app.task
def a_installs_psycopg_hook():
    psycogreen.gevent.patch_psycopg()  # the hook line
    return "patched"


@app.task
def b_queries_postgres():
    conn = psycopg2.connect(**PG)
    try:
        cur = conn.cursor()
        cur.execute("SELECT pg_sleep(0.2)")  # the query line
        cur.fetchall()
    finally:
        conn.close()
    return "queried"


def compact_dumps(obj, **kwargs):  # the patched function
    return ORIGINAL_DUMPS(obj, separators=(",", ":"), **kwargs)


@app.task
def c_patches_json():
    json.dumps = compact_dumps
    return json.dumps({"a": 1})


@app.task
def c_sets_socket_timeout():
    socket.setdefaulttimeout(3.0)
    return "ok"


@app.task
def c_shrinks_threadpool():
    gevent.get_hub().threadpool.maxsize = 1
    return "ok"


@app.task
def c_adds_log_handler():
    logger = logging.getLogger("hooks.audit")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return "ok"


@app.task
def zz_sees_a_clean_process():
    """Raises when anything the other tasks changed is still in effect."""
    problems = []
    if psycopg2.extensions.get_wait_callback() is not None:
        problems.append("psycopg2 has a wait callback")
    if json.dumps is not ORIGINAL_DUMPS:
        problems.append("json.dumps is patched")
    if socket.getdefaulttimeout() is not None:
        problems.append("socket default timeout is set")
    if gevent.get_hub().threadpool.maxsize != 10:
        problems.append("threadpool maxsize changed")
    logger = logging.getLogger("hooks.audit")
    if logger.handlers or not logger.propagate:
        problems.append("hooks.audit logger changed")
    if problems:
        raise RuntimeError("; ".join(problems))
    return "clean"


logging.getLogger("hooks.audit")  # exists before any task: its configuration is watched
