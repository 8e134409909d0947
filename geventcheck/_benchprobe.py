"""Imported by the workers of ``geventcheck bench`` with ``-I``: when each task ran.

The worker consumes one private queue (declared as the bench declares it: RabbitMQ refuses
a mismatch), sends no events and answers no remote control. It appends one JSON line per
task to ``$GEVENTCHECK_BENCH_OUT`` with the wall-clock times of ``task_prerun`` and
``task_postrun``, from whichever process ran it (prefork children too: one ``write`` on
an ``O_APPEND`` file each), and a ``ready`` line when the worker consumes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from celery import current_app, signals

from ._jsonlines import append

OUT_ENV = "GEVENTCHECK_BENCH_OUT"
# JSON: {"name": ..., "ttl": ..., "max_connections": N or null}
QUEUE_ENV = "GEVENTCHECK_BENCH_QUEUE"

_STARTED: dict[str, tuple[float, float]] = {}  # task id -> (wall clock, thread CPU) at prerun
_RAISED: list[int] = []  # the Redis pool size this module set, if it did


def _emit(event: str, **data: Any) -> None:
    append(os.environ[OUT_ENV], event, **data)


def _prerun(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        _STARTED[task_id] = (time.time(), time.thread_time())


def _postrun(task_id: str | None = None, state: str | None = None, retval: Any = None,
             **_: Any) -> None:
    end, cpu = time.time(), time.thread_time()
    start, cpu0 = _STARTED.pop(task_id or "", (None, None))
    error = None if state in ("SUCCESS", None) else repr(retval)[:300]
    # the thread's CPU: in a gevent worker, whatever else the hub ran meanwhile too
    _emit("done", id=task_id, start=start, end=end, state=state, error=error,
          cpu_ms=(cpu - cpu0) * 1000 if cpu0 is not None else None, pid=os.getpid())


def _ready(sender: Any = None, **_: Any) -> None:
    from gevent.monkey import is_module_patched

    app = sender.app if sender is not None else current_app
    pool = getattr(sender, "pool", None)
    egress = sys.modules.get("_geventcheck_child_egress")  # the childguard sitecustomize's
    guarded = bool(egress is not None and egress.active_guard() is not None)
    _emit("ready", pid=os.getpid(), patched=bool(is_module_patched("socket")), guarded=guarded,
          max_connections_set=_RAISED[0] if _RAISED else None,
          pool=f"{type(pool).__module__}.{type(pool).__name__}" if pool else None,
          tasks=sorted(name for name in app.tasks if not name.startswith("celery.")))


def install() -> None:
    from ._doctorlive import private_queue

    app = current_app
    queue = json.loads(os.environ[QUEUE_ENV])
    app.conf.task_queues = (private_queue(queue["name"], float(queue["ttl"])),)
    app.conf.worker_enable_remote_control = False
    app.conf.worker_send_task_events = False
    app.conf.worker_direct = False
    app.amqp.__dict__.pop("queues", None)
    wanted = queue.get("max_connections")
    options = dict(app.conf.broker_transport_options or {})
    if wanted and "max_connections" not in options:
        # kombu's Redis pool holds 10 connections; with acks_late a gevent worker acks from
        # as many greenlets as it runs, and the rest fail with MaxConnectionsError
        app.conf.broker_transport_options = {**options, "max_connections": wanted}
        _RAISED.append(wanted)
    signals.task_prerun.connect(_prerun, weak=False)
    signals.task_postrun.connect(_postrun, weak=False)
    signals.worker_ready.connect(_ready, weak=False)


if os.environ.get(OUT_ENV):
    install()
