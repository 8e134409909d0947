"""What a canaried gevent worker sees in production traffic: a C call that blocks the hub,
CPU work, a native call that keeps the GIL while it waits, and a task that cooperates."""

import ctypes
import time

from .celery import app

LIBC = ctypes.CDLL(None)  # releases the GIL
PYLIBC = ctypes.PyDLL(None)  # keeps it

COUNTER = {"sent": 0}


@app.task
def native_block():
    LIBC.usleep(120_000)  # 120 ms in C
    return "slept"


@app.task
def cpu_burn():
    n = 0
    for _ in range(6_000_000):  # a fixed amount of work: well over 100 ms of CPU here
        n += 1
    return n


@app.task
def holds_gil():
    PYLIBC.usleep(120_000)  # waits in C with the GIL held: no thread can look meanwhile
    return "held"


@app.task
def cooperative():
    time.sleep(0.05)  # patched: yields to the hub
    return "ok"


@app.task
def counts_sent():
    seen = COUNTER["sent"]
    time.sleep(0.01)
    COUNTER["sent"] = seen + 1  # read, switch, write: concurrent copies lose updates
    return seen
