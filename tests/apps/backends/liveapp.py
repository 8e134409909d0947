"""An app for doctor --live isolation tests: its broker, backend and queue come from the test."""

import os

from celery import Celery

from ._tasks import register

app = Celery("backends.liveapp", broker=os.environ["LIVEAPP_BROKER"],
             backend=os.environ["LIVEAPP_BACKEND"])
app.conf.task_default_queue = os.environ["LIVEAPP_QUEUE"]
register(app)
