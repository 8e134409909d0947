"""A celeryd_init receiver that crashes the process in native code."""

import ctypes

from celery import Celery
from celery.signals import celeryd_init

app = Celery("initcrash", broker="memory://")


@celeryd_init.connect
def read_a_bad_pointer(**kwargs):
    ctypes.string_at(0)


@app.task
def fine():
    return "ok"
