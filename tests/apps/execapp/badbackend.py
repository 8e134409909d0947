"""An app whose result backend cannot even be loaded."""

import os

from celery import Celery

DB = os.environ.get("EXECAPP_REDIS_DB", "9")
app = Celery("badbackend", broker=f"redis://127.0.0.1:6379/{DB}",
             backend="nosuchbackend://")
app.conf.task_default_queue = os.environ.get("EXECAPP_QUEUE", "execapp")


@app.task
def stores_a_result():
    return 42
