"""A native sleep (libc usleep through ctypes) called straight and through geventcheck's offload."""

import ctypes

from celery import Celery
from geventcheck.patches import run_blocking

app = Celery("offloaded", broker="memory://")
libc = ctypes.CDLL(None)
SLEEP_US = 200_000


@app.task
def native_sleep() -> None:
    libc.usleep(SLEEP_US)


@app.task
def offloaded_sleep() -> None:
    run_blocking(libc.usleep, SLEEP_US)
