"""A worker_init receiver that ends the process: the app's start-up fails on a real worker too."""

import sys

from celery import Celery
from celery.signals import worker_init

app = Celery("initexit", broker="memory://")


@worker_init.connect
def refuse_to_start(**kwargs):
    sys.exit(3)


@app.task
def fine():
    return "ok"
