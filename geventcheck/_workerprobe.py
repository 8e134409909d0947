"""Loaded into a real ``celery worker -P gevent`` by ``audit --mode worker`` (``-I`` option).

Celery imports ``-I`` modules while it builds the worker, after its own entry point has
monkey-patched the process and before the worker's bootsteps are created, so the hub
monitor joins the worker as a bootstep exactly as the pool sees production. It writes
what it measures as JSON lines to ``$GEVENTCHECK_WORKER_OUT``; the parent judges.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from celery import bootsteps, current_app, signals

from ._jsonlines import append

OUT_ENV = "GEVENTCHECK_WORKER_OUT"
CONFIG_ENV = "GEVENTCHECK_WORKER_CONFIG"
COLLECT_TASK = "geventcheck.worker.collect"

_CFG: dict[str, Any] = json.loads(os.environ.get(CONFIG_ENV) or "{}")
_STATE: dict[str, Any] = {"monitor": None, "roots": (), "runs": {}}


def filesystem_options(folder: str) -> dict[str, Any]:
    """kombu's filesystem transport kept inside ``folder``: messages, the exchange tables
    and the messages taken (its default control folder is relative to the working
    directory, and without ``store_processed`` a taken message passes through /tmp)."""
    return {"data_folder_in": folder, "data_folder_out": folder, "store_processed": True,
            "processed_folder": os.path.join(folder, "processed"),
            "control_folder": os.path.join(folder, "control"), "polling_interval": 0.05}


def _emit(event: str, **data: Any) -> None:
    append(os.environ[OUT_ENV], event, **data)


def app_roots(app: Any) -> tuple[str, ...]:
    """The folders of the app's own code. The collect task is geventcheck's, so its
    package is none of them: else a stall that ends in the probe's own code (a GIL-holding
    call read the moment it gave the GIL back) is blamed on geventcheck's lines."""
    from .runner import _appload

    own = os.path.dirname(os.path.realpath(__file__)) + os.sep
    return tuple(root for root in _appload.app_roots(app) if root != own)


class HubProbe(bootsteps.StartStopStep):  # type: ignore[misc]
    """Starts geventcheck's hub monitor with the worker's pool, stops it with the worker."""

    requires = ("celery.worker.components:Pool",)

    def start(self, worker: Any) -> None:
        import greenlet
        from gevent import get_hub
        from gevent.monkey import is_module_patched

        from ._paths import is_audited_file
        from .detectors import _drivers, _hub, _stalls
        from .runner import _appload

        # imported here, not in a task's run: an import is a stall of geventcheck's own
        _STATE.update(drivers=_drivers, stalls=_stalls, hub=get_hub())

        app = worker.app
        roots = app_roots(app)
        monitor = _hub.HubMonitor(_CFG.get("warn_ms", 10.0) / 1000,
                                  is_app_file=lambda path: is_audited_file(path, roots))
        monitor.start()
        monitor.ignore(greenlet.getcurrent())
        _STATE.update(monitor=monitor, roots=roots)
        tasks = _appload.list_tasks(app, tuple(_CFG.get("globs", ())))
        _emit("ready", pid=os.getpid(), patched=bool(is_module_patched("socket")),
              pool=f"{type(worker.pool).__module__}.{type(worker.pool).__name__}",
              python=sys.version.split()[0],
              gevent=__import__("gevent").__version__,
              celery=__import__("celery").__version__,
              tasks=[{"name": t.name, "queue": t.queue, "required": list(t.required)}
                     for t in tasks if t.name != COLLECT_TASK])

    def stop(self, worker: Any) -> None:
        monitor = _STATE.get("monitor")
        if monitor is not None:
            monitor.stop()


def _prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task is not None and task.name != COLLECT_TASK:
        monitor = _STATE["monitor"]
        # nothing here may let go of the GIL (a schedstat read does): this is the task's
        # run, and a look of the monitor landing in geventcheck's code called a
        # GIL-holding task's stall geventcheck's own work (busy machine, 1 run in 5)
        _STATE["runs"][task_id] = (time.perf_counter(), time.thread_time(),
                                   monitor.looked_queued_ms() if monitor is not None else 0.0,
                                   monitor.held_s if monitor is not None else 0.0)


def _postrun(task_id: str | None = None, task: Any = None, state: str | None = None,
             retval: Any = None, **_: Any) -> None:
    started = _STATE["runs"].pop(task_id, None)
    if started is None:
        return
    wall, cpu, queued, held = started
    monitor = _STATE["monitor"]
    error = repr(retval) if state not in ("SUCCESS", None) else None
    # as the in-process audit measures a run: a busy machine's share and the monitor's
    # own are left out of the task's time
    run = {"id": task_id, "task": task.name, "state": state, "error": error,
           "wall_ms": (time.perf_counter() - wall) * 1000,
           "cpu_ms": (time.thread_time() - cpu) * 1000,
           "overhead_ms": ((monitor.held_s if monitor is not None else 0.0) - held) * 1000}
    # Finished by the hub once the task's greenlet has ended, not here: reading schedstat
    # and writing the line let go of the GIL, and on a busy machine the monitor's looks
    # landed there and called a GIL-holding task's stall geventcheck's own work, not
    # judged. The hub runs the callback before it takes the next message.
    _STATE["hub"].loop.run_callback(_emit_run, run, queued)


def _emit_run(run: dict[str, Any], queued_before: float) -> None:
    monitor = _STATE["monitor"]
    queued = (monitor.queued_ms() if monitor is not None else 0.0) - queued_before
    _emit("run", **run, queued_ms=queued)


def _collect(phase_id: str, run: int, threshold_ms: float, warn_ms: float,
             next_phase: str) -> None:
    """Sent after each phase: the hub has run since the phase's last task, so every stall
    of the phase is closed; its findings go out with the phase's number. Then the monitor
    names the stalls to come after the next phase (warm-up stalls are not judged)."""
    from ._model import finding_to_dict

    _drivers, _stalls = _STATE["drivers"], _STATE["stalls"]
    import greenlet

    monitor = _STATE["monitor"]
    if monitor is not None:  # this greenlet is geventcheck's work, not the app's
        monitor.ignore(greenlet.getcurrent())
    stalls = monitor.take_stalls() if monitor is not None else []
    if monitor is not None:
        monitor.phase = next_phase
    blocking = frozenset(d.name for d in _drivers.inventory(1) if d.status == "blocking")
    findings = _stalls.stall_findings(stalls, threshold_s=threshold_ms / 1000,
                                      warn_s=warn_ms / 1000, app_roots=_STATE["roots"],
                                      blocking_drivers=blocking, run=run)
    _emit("collected", phase_id=phase_id, findings=[finding_to_dict(f) for f in findings])


def install() -> None:
    """Add the bootstep and the per-task timers to the app the worker is being built for."""
    app = current_app
    app.steps["worker"].add(HubProbe)
    app.task(name=COLLECT_TASK, ignore_result=True)(_collect)
    from ._doctorlive import private_queue

    # one private queue, declared as the parent declares it (RabbitMQ refuses a mismatch);
    # no remote control, events or direct queue on the app's broker
    app.conf.task_queues = (private_queue(_CFG["queue"], float(_CFG["ttl"])),)
    app.conf.worker_enable_remote_control = False
    app.conf.worker_send_task_events = False
    app.conf.worker_direct = False
    app.amqp.__dict__.pop("queues", None)
    folder = _CFG.get("filesystem")
    if folder:  # the embedded broker: kombu's filesystem transport in the audit's folder
        app.conf.broker_transport_options = filesystem_options(folder)
    signals.task_prerun.connect(_prerun, weak=False)
    signals.task_postrun.connect(_postrun, weak=False)


if os.environ.get(OUT_ENV):
    install()
