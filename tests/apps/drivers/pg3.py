"""psycopg 3: cooperative when imported after patching (it picks a Python wait function)."""

import psycopg

from ._settings import PG, SLEEP_S
from .celery import app


@app.task
def pg_sleep() -> None:
    conn = psycopg.connect(**PG)
    try:
        cur = conn.cursor()
        cur.execute("SELECT pg_sleep(%s)", (SLEEP_S,))
        cur.fetchall()
        cur.close()
    finally:
        conn.close()
