"""One task that is go, one that needs arguments, on the same queue."""

import time

from celery import Celery

app = Celery("mixed", broker="memory://")
app.conf.task_default_queue = "io"


@app.task
def fetch():
    time.sleep(0.05)  # cooperative once patched
    return "ok"


@app.task
def charge(order_id):
    return order_id


@app.task
def crunch():
    deadline = time.perf_counter() + 0.12
    n = 0
    while time.perf_counter() < deadline:
        n += 1
    return n
