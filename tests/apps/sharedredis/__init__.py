"""One redis-py client shared by every task, as apps keep it at module level.

redis-py's default pool opens at most 100 connections: at concurrency 150 the tasks beyond
the 100th raise "Too many connections" instead of waiting for one.
"""

import os
import uuid

import redis
from celery import Celery

app = Celery("sharedredis", broker="memory://")
client = redis.Redis(host=os.environ.get("REDIS_HOST", "127.0.0.1"),
                     port=int(os.environ.get("REDIS_PORT", "6379")))


@app.task
def wait_on_redis() -> None:
    # A key nobody pushes to: the server holds the reply for the whole timeout.
    client.blpop([f"geventcheck:empty:{uuid.uuid4().hex}"], timeout=0.3)
