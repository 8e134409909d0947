"""An app configured the way the report's authors had theirs: the pool set in code."""

import os

from celery import Celery, signals

app = Celery("poolcfg", broker=os.environ.get("POOLCFG_BROKER", "redis://127.0.0.1:6379/15"),
             include=["poolcfg.tasks"])
app.conf.worker_pool = os.environ.get("POOLCFG_POOL", "prefork")  # the hardcoded pool line
app.conf.worker_concurrency = 8
app.conf.worker_prefetch_multiplier = 1
app.conf.task_default_queue = "default"


@signals.worker_process_init.connect
def setup_tracing(**kwargs):
    """Set up per child process, as under prefork."""
