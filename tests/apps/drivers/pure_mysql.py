"""PyMySQL: pure Python over the (patched) socket module."""

import pymysql

from ._settings import MYSQL, SLEEP_S
from .celery import app


@app.task
def mysql_sleep() -> None:
    conn = pymysql.connect(**MYSQL)
    try:
        cur = conn.cursor()
        cur.execute("SELECT SLEEP(%s)", (SLEEP_S,))
        cur.fetchall()
        cur.close()
    finally:
        conn.close()
