"""A worker_init receiver that never returns: a real worker would never start either."""

import time

from celery import Celery
from celery.signals import worker_init

app = Celery("inithangs", broker="memory://")


@worker_init.connect
def wait_for_a_config_server(**kwargs):
    time.sleep(3600)  # a server that never answers


@app.task
def fine():
    return "ok"
