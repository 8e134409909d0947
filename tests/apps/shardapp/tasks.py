"""Enough small tasks of each kind that three shards each get some: the sharded audit
must judge every one of them as the whole audit does."""

import ctypes
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
def needs_args(user_id):
    return user_id


def _cooperative(name):
    def run():
        time.sleep(0.02)
        return name

    run.__name__ = name
    return app.task(run, name=f"shardapp.tasks.{name}")


for _name in ("wait_a", "wait_b", "wait_c", "wait_d", "wait_e", "wait_f"):
    globals()[_name] = _cooperative(_name)


@app.task
def light_a():
    return 1


@app.task
def light_b():
    return 2
