"""What audited tasks publish: counted per run, and kept off every real broker by default.

An audit runs the app's tasks against whatever broker it names, often a shared
one where real workers would pick the messages up. So unless the user allows
it, the app's broker is swapped for kombu's in-process ``memory://`` transport
before anything connects: chains, chords, groups, retries, ``send_task`` and
results sent over the broker (``rpc://``) all land in this process. Every task
message still goes through Celery's own ``send_task_message`` (so
``before_task_publish`` receivers and stamping run as on a worker) and is
counted as ``"<task> → <queue>"`` against the run that sent it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import greenlet

MEMORY_BROKER = "memory://"
# Results stay in this process too: a worker stores them, the audit must not write into
# the app's real result backend (a shared Redis or database) unless allowed.
MEMORY_BACKEND = "cache+memory://"


class Outbox:
    """Counts the task messages each run publishes; installed once per audited process."""

    def __init__(self, app: Any, *, allow_publish: bool) -> None:
        self.app = app
        self.allow_publish = allow_publish
        self._runs: dict[Any, Counter[str]] = {}
        self._send: Any = None

    def install(self) -> None:
        """Swap the broker and result backend (unless allowed) and wrap the sender; before
        any connection."""
        app = self.app
        if not self.allow_publish:
            app.conf.broker_url = MEMORY_BROKER
            app.conf.broker_read_url = None
            app.conf.broker_write_url = None
            # pools built from the old URL would still reach the real broker
            app._pool = None
            app.amqp._producer_pool = None
            self._keep_results_here()
        self._send = app.amqp.send_task_message
        app.amqp.send_task_message = self._sending

    def _keep_results_here(self) -> None:
        """Swap a result backend that stores results on a server for an in-process one.

        Its class is loaded first (nothing connects): a backend that cannot even load
        stays, so its failure shows as it would on a worker. ``rpc://`` already goes
        over the (swapped) broker.
        """
        from celery.app.backends import by_url

        app = self.app
        url = app.conf.result_backend
        if not url or str(url).split(":", 1)[0] in ("disabled", "rpc", "cache+memory"):
            return
        try:
            by_url(url, app.loader)
        except Exception:
            return
        app.conf.result_backend = MEMORY_BACKEND
        for holder in (app._local, app):
            holder.__dict__.pop("backend", None)

    def _sending(self, producer: Any, name: str, message: Any, *args: Any,
                 **options: Any) -> Any:
        queue = options.get("queue")
        if isinstance(queue, str | type(None)):
            qname = queue or options.get("routing_key") or self.app.conf.task_default_queue
        else:
            qname = getattr(queue, "name", None) or options.get("routing_key") or "?"
        counts = self._owner()
        if counts is not None:
            counts[f"{name} → {qname}"] += 1
        return self._send(producer, name, message, *args, **options)

    def _owner(self) -> Counter[str] | None:
        """The run of this greenlet, or of the run that spawned it; failing both, a run in
        flight (all runs in flight are copies of the same task)."""
        glet: Any = greenlet.getcurrent()
        for _ in range(64):
            if glet is None:
                break
            counts = self._runs.get(glet)
            if counts is not None:
                return counts
            spawner = getattr(glet, "spawning_greenlet", None)  # a weakref on gevent.Greenlet
            glet = spawner() if spawner is not None else getattr(glet, "parent", None)
        return next(iter(self._runs.values()), None)

    def begin(self) -> None:
        """Start counting for the run in the current greenlet."""
        self._runs[greenlet.getcurrent()] = Counter()

    def end(self) -> dict[str, int]:
        """What the current greenlet's run published, by ``"<task> → <queue>"``."""
        return dict(sorted(self._runs.pop(greenlet.getcurrent(), Counter()).items()))
