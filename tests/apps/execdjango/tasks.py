"""A task that queries, and receivers that write down what a worker would show them.

Each line of $EXECDJANGO_LOG is one JSON object: what ``worker_init`` was sent with, and,
after each task, whether its greenlet's database connection was still open.
"""

import json
import os

from celery import shared_task, signals
from django.db import connection


def _note(**data):
    with open(os.environ["EXECDJANGO_LOG"], "a") as fh:
        fh.write(json.dumps(data) + "\n")


@signals.worker_init.connect
def on_worker_init(sender=None, **kwargs):
    _note(event="worker_init", hostname=getattr(sender, "hostname", None),
          app=getattr(getattr(sender, "app", None), "main", None))
    # connected after Celery's Django fixup has connected its own receivers
    signals.task_postrun.connect(after_task, weak=False)


def after_task(sender=None, **kwargs):
    _note(event="postrun", open=connection.connection is not None)


@shared_task
def queries():
    with connection.cursor() as cur:
        cur.execute("SELECT 1")
        return cur.fetchone()[0]
