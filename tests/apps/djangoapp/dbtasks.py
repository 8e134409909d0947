"""Tasks that use Django's database connection, each greenlet getting its own.

Shared tasks, so that both Celery apps of the project (with and without Celery's
Django fixup) run them.
"""

import time

import gevent
from celery import shared_task
from django.db import connection

QUERY_S = 0.05
HOLD_S = 0.1


@shared_task
def hold_connection():
    """Queries, waits cooperatively, queries again: its connection stays open throughout."""
    with connection.cursor() as cur:
        cur.execute("SELECT pg_sleep(%s)", [QUERY_S])
    time.sleep(HOLD_S)  # patched: other tasks run meanwhile, each holding its connection
    with connection.cursor() as cur:
        cur.execute("SELECT 1")
        return cur.fetchone()[0]


def _backend_pid():
    with connection.cursor() as cur:  # opened in the spawned greenlet
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


@shared_task
def query_in_spawned_greenlet():
    """The greenlet it spawns gets a connection of its own that nothing ever closes."""
    return gevent.spawn(_backend_pid).get() > 0


def _backend_pid_closed():
    try:
        return _backend_pid()
    finally:
        connection.close()  # the fix: close it in the greenlet that opened it


@shared_task
def query_in_spawned_greenlet_closed():
    return gevent.spawn(_backend_pid_closed).get() > 0
