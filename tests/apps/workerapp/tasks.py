"""One blocking, one CPU-bound and one cooperative task: a real gevent worker must judge
them as the in-process audit does."""

import ctypes
import os
import time

from .celery import app

LIBC = ctypes.CDLL(None)


@app.task
def native_block():
    LIBC.usleep(200_000)  # 200 ms in C: far above the 50 ms threshold
    return "slept"


@app.task
def cpu_burn():
    n = 0
    for _ in range(6_000_000):  # a fixed amount of work, several hundred ms of CPU here
        n += 1
    return n


@app.task
def cooperative():
    time.sleep(0.05)
    return "ok"


@app.task
def exits_worker():
    os._exit(3)  # takes the whole worker down


@app.task
def waits_forever():
    LIBC.pause()  # blocks the hub for good: the worker stops answering
