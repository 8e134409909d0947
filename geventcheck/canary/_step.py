"""The canary inside a real ``celery worker -P gevent``: a bootstep and two task signals.

Per task the worker pays two signal handlers (a clock read and a few dict operations);
per hub loop iteration two watcher callbacks (``_watch``). Everything else (naming the
call, the bytecode look at shared state, metrics, log lines, the push to Redis) runs in
one greenlet every ``flush_s`` seconds, off the tasks' path.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any

from celery import bootsteps, signals

from ._config import CanaryConfig
from ._tally import SCHEMA, TaskTally

log = logging.getLogger("geventcheck.canary")


class Canary:
    """Everything the canary keeps about one worker process."""

    def __init__(self, app: Any, config: CanaryConfig) -> None:
        self.app = app
        self.config = config
        self.tallies: dict[str, TaskTally] = {}
        self.unattributed = TaskTally()
        self.started = time.time()
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        self.info: dict[str, Any] = {}
        self._runs: dict[str, float] = {}
        self._new_tasks: list[tuple[str, Any]] = []  # (task name, its function) first seen
        self._edges: Any = None
        self._watch: Any = None
        self._digester: Any = None
        self._metrics: Any = None
        self._redis: Any = None
        self._flusher: Any = None
        self._last_push = 0.0
        self._push_failing = False

    # -- start and stop ------------------------------------------------------------------
    def start(self, worker: Any) -> None:
        import gevent
        from gevent.monkey import is_module_patched

        pool = f"{type(worker.pool).__module__}.{type(worker.pool).__name__}"
        if not is_module_patched("socket") or "gevent" not in pool:
            log.warning("geventcheck canary: this worker is not a gevent worker (pool %s); "
                        "the canary is off", pool)
            return
        from ..detectors._gcwatch import GcWatch
        from ..runner._appload import app_roots
        from ._digest import Digester
        from ._watch import LoopWatch

        config = self.config
        self.worker_name = f"{worker.hostname}:{os.getpid()}"
        self.info = {
            "app": self.app.main, "pool": pool, "concurrency": worker.concurrency,
            "python": __import__("platform").python_version(),
            "gevent": gevent.__version__, "celery": __import__("celery").__version__,
            "patched": True,
        }
        for name, task in sorted(self.app.tasks.items()):
            if not name.startswith("celery."):
                self._tally(name, task)  # a task no worker runs is reported as not run
        gc_watch = GcWatch()
        gc_watch.install()
        self._digester = Digester(app_roots(self.app), threshold_s=config.threshold_ms / 1000,
                                  warn_s=config.warn_ms / 1000, gc=gc_watch)
        self._edges = self._digester.edges
        self._start_metrics()
        if config.redis:
            from ._store import connect

            self._redis = connect(config.redis)
        self._watch = LoopWatch(gevent.get_hub().loop, min_stall_s=config.warn_ms / 1000,
                                sample_every_s=config.sample_every_ms / 1000,
                                on_error=lambda message: log.error("geventcheck canary: %s",
                                                                   message))
        self._watch.start()
        signals.task_prerun.connect(self._prerun, weak=False,
                                    dispatch_uid="geventcheck.canary.prerun")
        signals.task_postrun.connect(self._postrun, weak=False,
                                     dispatch_uid="geventcheck.canary.postrun")
        self._flusher = gevent.spawn(self._flush_forever)
        log.info("geventcheck canary: watching the hub (stalls from %g ms, blocking events "
                 "from %g ms)%s%s", config.warn_ms, config.threshold_ms,
                 f", metrics on :{config.port}" if self._metrics and config.port else "",
                 f", summaries to Redis as {self.deployment!r}" if self._redis else "")

    def _start_metrics(self) -> None:
        try:
            from ._metrics import CanaryMetrics
        except ImportError:
            log.warning("geventcheck canary: prometheus_client is not installed, so no "
                        "metrics (pip install 'geventcheck[canary]')")
            return
        self._metrics = CanaryMetrics(self)
        if self.config.port:
            from prometheus_client import start_http_server

            try:
                start_http_server(self.config.port)
            except OSError as exc:
                log.warning("geventcheck canary: cannot serve metrics on :%d (%s); they are "
                            "in prometheus_client's default registry", self.config.port,
                            exc.strerror or exc)

    def stop(self) -> None:
        if self._watch is None:
            return
        signals.task_prerun.disconnect(dispatch_uid="geventcheck.canary.prerun")
        signals.task_postrun.disconnect(dispatch_uid="geventcheck.canary.postrun")
        if self._flusher is not None:
            self._flusher.kill(block=False)
        self.flush()
        self.push()
        self._watch.stop()
        self._watch = None

    @property
    def deployment(self) -> str:
        return self.config.deployment or self.app.main or "default"

    # -- per task (hot path: keep it small) ----------------------------------------------
    def _prerun(self, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        now = time.perf_counter()
        name = task.name
        self._runs[task_id or ""] = now
        if name not in self._digester.codes.seen:
            # its bytecode is read for shared state in the next flush, off this path
            self._new_tasks.append((name, self._digester.codes.learn(task)))
        self._edges.append((now, time.thread_time(), name, True))

    def _postrun(self, task_id: str | None = None, task: Any = None,
                 state: str | None = None, **_: Any) -> None:
        now = time.perf_counter()
        name = task.name
        began = self._runs.pop(task_id or "", None)
        tally = self._tally(name, task)
        tally.runs += 1
        if state not in ("SUCCESS", "RETRY", None):
            tally.failed += 1
        if began is not None:
            tally.wall_ms_total += (now - began) * 1000
        self._edges.append((now, time.thread_time(), name, False))
        # metrics of runs are read from the tallies when scraped: nothing to do here

    # -- off the hot path ----------------------------------------------------------------
    def _flush_forever(self) -> None:
        import gevent

        while True:
            gevent.sleep(self.config.flush_s)
            try:
                self.flush()
                if self._redis is not None and \
                        time.monotonic() - self._last_push >= self.config.push_s:
                    self.push()
            except Exception:  # the canary must never take the worker down
                log.exception("geventcheck canary: flush failed; it goes on")

    def flush(self) -> None:
        """Digest the stalls found since the last flush into tallies, metrics and logs."""
        if self._digester is None:
            return
        from ._digest import UNATTRIBUTED, state_findings

        new, self._new_tasks = self._new_tasks, []
        for name, func in new:
            found = state_findings(func, self._digester.app_roots)
            if found:
                self._tally(name).add(found)
        stalls = self._watch.take() if self._watch is not None else []
        for digested in (d for stall in stalls for d in self._digester.digest(stall)):
            if digested.own:
                continue
            if self._metrics is not None:
                self._metrics.stall(digested.task, digested.duration_s, digested.findings)
            if not digested.findings:
                continue
            tally = (self.unattributed if digested.task == UNATTRIBUTED
                     else self._tally(digested.task))
            tally.stalls += 1
            tally.worst_stall_ms = max(tally.worst_stall_ms, digested.duration_s * 1000)
            tally.add(list(digested.findings))
            for finding in digested.findings:
                if finding.severity == "error":
                    self._log_event(digested.task, finding)

    def _tally(self, name: str, task: Any = None) -> TaskTally:
        tally = self.tallies.get(name)
        if tally is None:
            task = task if task is not None else self.app.tasks.get(name)
            tally = self.tallies[name] = TaskTally(queue=_queue_of(task))
        return tally

    def _log_event(self, task: str, finding: Any) -> None:
        event = {"event": "geventcheck.hub-stall", "worker": self.worker_name, "task": task,
                 "kind": finding.kind, "ms": finding.duration_ms, "where": finding.where,
                 "call": finding.native, "message": finding.message, "fix": finding.fix}
        log.warning("%s", json.dumps(event, separators=(",", ":")),
                    extra={"geventcheck": event})

    def in_flight(self) -> int:
        return len(self._runs)

    def iterations(self) -> int:
        return self._watch.iterations if self._watch is not None else 0

    def summary(self) -> dict[str, Any]:
        config = self.config
        return {
            "schema": SCHEMA, "worker": self.worker_name, "deployment": self.deployment,
            "started": self.started, "updated": time.time(),
            "threshold_ms": config.threshold_ms, "warn_ms": config.warn_ms, **self.info,
            "tasks": {name: t.to_dict() for name, t in sorted(self.tallies.items())},
            "unattributed": self.unattributed.to_dict(),
        }

    def push(self) -> None:
        if self._redis is None:
            return
        from ._store import push

        self._last_push = time.monotonic()
        try:
            push(self._redis, self.deployment, self.worker_name, self.summary())
        except Exception as exc:
            if not self._push_failing:
                log.warning("geventcheck canary: cannot push to %s: %s (retrying every "
                            "%g s)", self.config.redis, exc, self.config.push_s)
            self._push_failing = True
        else:
            self._push_failing = False


def _queue_of(task: Any) -> str | None:
    queue = getattr(task, "queue", None)
    if queue:
        return str(queue)
    try:
        route = task.app.amqp.router.route({}, task.name)
        return str(route["queue"].name)
    except Exception:
        return None


_CANARY: Canary | None = None


class CanaryStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Starts the canary with the worker's pool and stops it (with a last push) with the
    worker."""

    requires = ("celery.worker.components:Pool",)

    def start(self, worker: Any) -> None:
        canary = _CANARY
        if canary is not None:
            canary.start(worker)

    def stop(self, worker: Any) -> None:
        canary = _CANARY
        if canary is not None:
            canary.stop()


def attach(app: Any, config: CanaryConfig) -> Canary:
    """Add the bootstep to ``app`` (before its worker is built)."""
    global _CANARY
    _CANARY = Canary(app, config)
    app.steps["worker"].add(CanaryStep)
    return _CANARY


def current() -> Canary | None:
    return _CANARY
