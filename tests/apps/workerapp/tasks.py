"""Blocking, CPU-bound (with and without the GIL held in native code) and cooperative tasks:
a real gevent worker must judge them as the in-process audit does."""

import ctypes
import os
import time

from .celery import app

LIBC = ctypes.CDLL(None)
PYDLL = ctypes.PyDLL(None)  # calls through PyDLL keep the GIL


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
def gil_held_native_wait():
    PYDLL.usleep(150_000)  # a wait in C that keeps the GIL: no Python thread runs meanwhile
    return "slept holding the GIL"


@app.task
def gil_held_native_cpu():
    import math

    return math.factorial(90_000).bit_length()  # C computation that keeps the GIL


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
