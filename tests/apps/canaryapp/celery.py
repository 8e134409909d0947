"""An app with the canary switched on by its one line (tests/test_canary.py)."""

import os

from celery import Celery

import geventcheck.canary

app = Celery("canaryapp", broker=os.environ.get("CANARYAPP_BROKER", "memory://"),
             include=["canaryapp.tasks"])
app.conf.task_default_queue = os.environ.get("CANARYAPP_QUEUE", "canaryapp")
app.conf.worker_enable_remote_control = False
if os.environ.get("CANARYAPP_ONE_LINE"):
    geventcheck.canary.install(app)
