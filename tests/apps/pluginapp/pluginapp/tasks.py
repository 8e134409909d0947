"""Tasks a gevent worker runs well, and tasks that block its hub."""

import ctypes
import os
import time

from .celery import app

LIBC = ctypes.CDLL(None)
PYDLL = ctypes.PyDLL(None)  # calls through PyDLL keep the GIL


@app.task
def add(x, y):
    return x + y


@app.task
def greet(name, punctuation="!"):
    time.sleep(0.01)  # cooperative once patched
    return f"hello {name}{punctuation}"


@app.task
def total(values):
    return sum(values)


@app.task
def native_sleep(ms):
    LIBC.usleep(ms * 1000)  # the native sleep
    return ms


@app.task
def spin(n):
    count = 0
    for _ in range(n):  # the CPU loop
        count += 1
    return count


@app.task
def gil_sleep(ms):
    PYDLL.usleep(ms * 1000)  # the GIL-holding wait
    return ms


@app.task
def pg_sleep(seconds):
    import psycopg2

    conn = psycopg2.connect(os.environ.get("PLUGINAPP_DSN", "host=127.0.0.1 dbname=test"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(%s)", (seconds,))  # the driver call
    finally:
        conn.close()
    return seconds
