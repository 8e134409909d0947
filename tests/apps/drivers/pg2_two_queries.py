"""psycopg2 without a wait callback, two queries in one stretch: a quick lookup, then a slow one.

Nothing yields between them, so the hub sees one stall of about 230 ms; 200 ms of it is the
second query. Kept out of ``drivers.pg2`` so ``--task 'drivers.pg2.*'`` does not select it.
"""

import psycopg2

from ._settings import PG, SLEEP_S
from .celery import app

LOOKUP_S = 0.03


@app.task
def lookup_then_report() -> None:
    conn = psycopg2.connect(**PG)
    try:
        cur = conn.cursor()
        cur.execute("SELECT pg_sleep(%s)", (LOOKUP_S,))  # the quick lookup
        cur.fetchall()
        cur.execute("SELECT pg_sleep(%s)", (SLEEP_S,))  # the slow report
        cur.fetchall()
        cur.close()
    finally:
        conn.close()
