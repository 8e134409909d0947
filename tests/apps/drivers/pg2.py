"""psycopg2: libpq waits in C unless a wait callback (psycogreen) is installed."""

import psycopg2

from ._settings import PG, SLEEP_S
from .celery import app


@app.task
def pg_sleep() -> None:
    conn = psycopg2.connect(**PG)
    try:
        cur = conn.cursor()
        cur.execute("SELECT pg_sleep(%s)", (SLEEP_S,))
        cur.fetchall()
        cur.close()
    finally:
        conn.close()
