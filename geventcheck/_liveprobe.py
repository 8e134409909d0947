"""The app the doctor's --live worker runs: the user's app plus one probe task.

Loaded by ``celery -A geventcheck._liveprobe worker ...``. The argv scan that
decides patching sees the user's worker arguments unchanged. The worker knows one
queue only, the doctor's private one, and neither answers remote control nor sends
events: nothing it does reaches the app's own queues.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from celery.app.utils import find_app
from celery.backends.base import DisabledBackend

from ._doctorlive import QUEUE_ENV, TTL_ENV, private_queue

app: Any = find_app(os.environ["GEVENTCHECK_TARGET_APP"])
app.conf.task_queues = (private_queue(os.environ[QUEUE_ENV], float(os.environ[TTL_ENV])),)
app.conf.worker_enable_remote_control = False  # no pidbox queue on the app's broker
app.conf.worker_send_task_events = False
app.conf.worker_direct = False  # no <hostname>.dq2 queue either
# On Redis every consumer puts back messages other workers took and never acknowledged
# (after visibility_timeout): this one is not to publish into the app's queues at all.
app.conf.broker_transport_options = {**(app.conf.broker_transport_options or {}),
                                     "unacked_restore_limit": 0}
app.amqp.__dict__.pop("queues", None)  # in case the app already read its own task_queues


class _ProbeTask(app.Task):  # type: ignore[misc]
    """Stores no result, and builds no result backend of the app's in its greenlet."""

    _backend = DisabledBackend(app=app)


@app.task(name="geventcheck.live_probe", ignore_result=True,  # type: ignore[untyped-decorator]
          base=_ProbeTask)
def live_probe(path: str) -> None:
    """Say, from inside the running worker, how it really runs tasks."""
    monkey = sys.modules.get("gevent.monkey")
    import greenlet

    current = greenlet.getcurrent()
    info = {
        "patched": bool(monkey and monkey.is_module_patched("socket")),
        "in_greenlet": current.parent is not None,
        "pid": os.getpid(),
    }
    with open(path + ".tmp", "w") as fh:
        json.dump(info, fh)
    os.replace(path + ".tmp", path)
