"""mysqlclient (MySQLdb) waits for the server in C; with --shim mysqldb this is PyMySQL."""

import MySQLdb

from ._settings import MYSQL, SLEEP_S
from .celery import app


@app.task
def mysql_sleep() -> None:
    conn = MySQLdb.connect(**MYSQL)
    try:
        cur = conn.cursor()
        cur.execute("SELECT SLEEP(%s)", (SLEEP_S,))
        cur.fetchall()
        cur.close()
    finally:
        conn.close()
