"""One task per way a task can go wrong on a gevent worker, and some that are fine."""

import ctypes
import multiprocessing
import os
import sys
import threading
import time

from .celery import app

LIBC = ctypes.CDLL(None)
LOCK = multiprocessing.Lock()


@app.task
def cooperative_sleep():
    time.sleep(0.05)
    return "ok"


@app.task
def cpu_loop():
    # a fixed amount of work (about 150 ms of CPU here), not a fixed wall time: a busy
    # machine must not change what the task does
    n = 0
    for _ in range(5_000_000):
        n += 1
    return n


@app.task
def native_sleep():
    LIBC.usleep(80_000)  # the blocking line
    return "slept"


@app.task
def mp_lock_across_wait():
    with LOCK:
        time.sleep(0.05)  # a cooperative wait while holding a native lock
    return "done"


@app.task
def waits_forever():
    threading.Event().wait()


@app.task
def calls_os_exit():
    os._exit(3)  # the exit line


@app.task
def calls_sys_exit():
    sys.exit(4)


@app.task
def segfaults():
    ctypes.string_at(0)


@app.task
def noisy():
    print("task output on stdout " * 50)
    os.write(1, b"raw bytes on fd 1 {not json}\n")
    sys.stderr.write("and on stderr\n")
    return "noisy"


@app.task
def always_fails():
    raise ValueError("bad input file")


@app.task
def needs_args(user_id, mode="fast"):
    return user_id


SEEN = []


@app.task
def dedupe_batch():
    """Reads a module-level list, waits, then acts on what it read: a lost-update race."""
    before = len(SEEN)
    time.sleep(0.01)
    SEEN.append(1)
    return len(SEEN) - before  # alone: always 1


@app.task
def stamp_and_id():
    """Varies on every run (a uuid, a clock reading) but not because of concurrency."""
    import uuid

    time.sleep(0.01)
    return {"id": str(uuid.uuid4()), "at": time.time(), "kind": "order"}


STOCK = {"items": 1}


@app.task
def reserve_last_item(turns):
    """Check-then-act on shared stock. Each copy first lets ``turns`` other greenlets run, so
    in the natural interleaving copy 0 has restocked before copy 1 looks, whatever the
    machine's speed (yields, not timers, set the order); a copy delayed at the right wait
    sells out the next."""
    for _ in range(turns):
        time.sleep(0)  # a cooperative yield
    if STOCK["items"] > 0:
        STOCK["items"] -= 1
        time.sleep(0)  # ship it: one yield
        STOCK["items"] += 1  # restock for the next order
        return "reserved"
    return "sold out"


PYDLL = ctypes.PyDLL(None)  # calls through PyDLL keep the GIL


@app.task
def gil_held_native_wait():
    PYDLL.usleep(150_000)  # the GIL-holding wait
    return "slept holding the GIL"


@app.task
def gil_held_native_cpu():
    import math

    return math.factorial(90_000).bit_length()  # the GIL-holding computation


@app.task
def spins_forever():
    n = 0
    while True:  # the endless loop
        n += 1


@app.task
def collects_garbage_cooperatively():
    """A cooperative task that a big garbage collection lands in: not the task's stall."""
    import gc

    import gevent

    junk = []
    for i in range(500_000):
        node: list = []
        node.append(node)
        junk.append(node)
        if i % 5_000 == 0:
            gevent.sleep(0)  # the allocation itself yields often
    del junk, node
    gevent.sleep(0.01)
    gc.collect()  # the collection
    gevent.sleep(0.01)
    return "ok"
