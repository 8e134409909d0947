import os

import geventcheck.patches
from celery import Celery

app = Celery(
    "bootstrapped",
    broker=os.environ.get("BOOTSTRAPPED_BROKER", "redis://127.0.0.1:6379/13"),
    backend=os.environ.get("BOOTSTRAPPED_BACKEND", "redis://127.0.0.1:6379/13"),
    include=["bootstrapped.tasks"],
)
app.conf.task_default_queue = os.environ.get("BOOTSTRAPPED_QUEUE", "bootstrapped")
app.conf.worker_hijack_root_logger = False
if os.environ.get("BOOTSTRAPPED_CONF_POOL"):
    app.conf.worker_pool = os.environ["BOOTSTRAPPED_CONF_POOL"]
if not os.environ.get("BOOTSTRAPPED_WITHOUT_LINE"):  # to test GEVENTCHECK_BOOTSTRAP=1 instead
    geventcheck.patches.bootstrap(app)  # the bootstrap line
