"""An app whose tasks use Celery's canvas, replace, retry and hooks, on a real Redis.

The broker and backend are Redis database EXECAPP_REDIS_DB; the queue is EXECAPP_QUEUE,
so a test can give each run a private queue and look into it afterwards.
"""

import os

from celery import Celery

DB = os.environ.get("EXECAPP_REDIS_DB", "9")
QUEUE = os.environ.get("EXECAPP_QUEUE", "execapp")
URL = f"redis://127.0.0.1:6379/{DB}"

app = Celery("execapp", broker=URL, backend=URL, include=["execapp.tasks"])
app.conf.task_default_queue = QUEUE
app.conf.result_expires = 600
