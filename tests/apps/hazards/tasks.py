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
    deadline = time.perf_counter() + 0.12
    n = 0
    while time.perf_counter() < deadline:
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
def reserve_last_item(start_ms):
    """Check-then-act on shared stock. Copies started 10 ms apart never overlap, so the
    natural interleaving looks fine; a copy delayed at the right waits sells out the next."""
    time.sleep(start_ms / 1000)
    if STOCK["items"] > 0:
        STOCK["items"] -= 1
        time.sleep(0.002)  # ship it
        STOCK["items"] += 1  # restock for the next order
        return "reserved"
    return "sold out"
