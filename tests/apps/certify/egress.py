"""A task that phones home: the egress guard stops it; nothing about it is a gevent problem."""

import socket
import time

from celery import Celery

app = Celery("egress", broker="memory://")


@app.task
def phone_home():
    time.sleep(0.05)
    socket.create_connection(("telemetry.example.com", 443), timeout=2).close()
    return "sent"
