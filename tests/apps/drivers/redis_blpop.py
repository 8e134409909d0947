"""redis-py: pure-Python sockets; BLPOP on an empty key waits on the server."""

import uuid

import redis

from ._settings import REDIS, SLEEP_S
from .celery import app


@app.task
def blpop_empty() -> None:
    client = redis.Redis(**REDIS)
    try:
        # A key nobody pushes to: the server holds the reply for the whole timeout.
        client.blpop([f"geventcheck:empty:{uuid.uuid4().hex}"], timeout=SLEEP_S)
    finally:
        client.close()
