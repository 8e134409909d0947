"""Running one task the way ``celery worker -P gevent`` runs a message, not the way ``apply`` does.

``Task.apply`` is an eager call: no app set as default (shared tasks and
canvases bind to Celery's fallback app), no message (no ``argsrepr`` for
stamping, ``self.replace`` and ``self.retry`` take their eager branch), Django's
fixup skips its per-task connection handling, and an exception from a hook or
the result backend escapes it. Here each run gets a worker-like request built
from the message Celery itself would send (``create_task_message``, serialized
and read back by a ``celery.worker.request.Request``) and goes through the
tracer the worker's consumer builds (``build_tracer``), exactly as
``fast_trace_task`` calls it. Whatever fails, the task body, ``before_start``,
``on_success``, ``after_return``, the result backend or the tracer, comes back
as an error with its traceback: a failure is never a success.
"""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
from dataclasses import dataclass, field
from typing import Any

import greenlet

from ._outbox import Outbox

# The task hooks the tracer calls after the outcome is stored: on a worker their
# exceptions are only logged, so they are caught here on their way through.
_LATE_HOOKS = ("on_success", "after_return")
_TAIL = 15  # traceback lines kept for the report


class AuditWorker:
    """Stands in for the ``WorkController`` that a gevent worker passes as ``sender``:
    receivers of ``worker_init`` (Django's fixup among them) read these attributes."""

    pool_cls = "celery.concurrency.gevent:TaskPool"

    def __init__(self, app: Any, hostname: str, concurrency: int) -> None:
        self.app = app
        self.hostname = hostname
        self.concurrency = concurrency
        self.pid = os.getpid()

    def __repr__(self) -> str:
        return f"<AuditWorker: {self.hostname} (gevent, concurrency {self.concurrency})>"


def start_worker(app: Any, concurrency: int) -> AuditWorker:
    """What ``celery worker -P gevent`` does between loading the app and taking messages:
    the loader's worker init, the app made default and current, ``celeryd_init`` with the
    node name, then ``worker_init`` with the worker (never ``worker_process_init``)."""
    from celery import signals
    from celery._state import _set_task_join_will_block
    from celery.app import trace
    from celery.utils.nodenames import gethostname, nodename

    hostname = nodename("geventcheck", gethostname())
    worker = AuditWorker(app, hostname, concurrency)
    app.loader.init_worker()
    trace.setup_worker_optimizations(app, hostname)  # set_current(), set_default(), finalize()
    signals.celeryd_init.send(sender=hostname, instance=worker, conf=app.conf,
                              options={"pool_cls": "gevent", "concurrency": concurrency})
    signals.worker_init.send(sender=worker)
    _set_task_join_will_block(False)  # the gevent pool's TaskPool.task_join_will_block
    return worker


@dataclass
class RunResult:
    """One run as the worker saw it: the Celery state, the value or what failed."""

    state: str
    value: Any = None
    error: BaseException | None = None
    error_text: str | None = None  # "ValueError: bad input (in after_return)"
    formatted: str | None = None  # the traceback Celery already formatted, if any
    retry: str | None = None
    published: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.error_text is not None

    def traceback_tail(self) -> list[str]:
        """The last lines of the failure's traceback; formatted on request, after the run."""
        if self.formatted is not None:
            return _tail([self.formatted])
        if self.error is not None:
            found = traceback.TracebackException.from_exception(self.error)
            # the hook watcher's own frame is not the user's business
            found.stack = traceback.StackSummary.from_list(
                [f for f in found.stack if f.filename != __file__])
            return _tail(list(found.format()))
        return []


@dataclass
class _Capture:
    """Failures the tracer only logs or signals, gathered for the run of one greenlet
    (formatted only once the run is over: the run's own time is measured)."""

    errors: list[tuple[str, BaseException]] = field(default_factory=list)


class _TraceLogCapture(logging.Handler):
    """Errors Celery's tracer logs instead of raising (process clean-up, say)."""

    def __init__(self, captures: dict[Any, _Capture]) -> None:
        super().__init__(logging.ERROR)
        self.captures = captures

    def emit(self, record: logging.LogRecord) -> None:
        capture = self.captures.get(greenlet.getcurrent())
        if capture is None or not record.exc_info or not record.exc_info[1]:
            return
        exc = record.exc_info[1]
        if not any(seen is exc for _, seen in capture.errors):
            capture.errors.append(("celery", exc))


def _tail(lines: list[str]) -> list[str]:
    flat = [part for line in lines for part in line.rstrip("\n").split("\n")]
    return flat[-_TAIL:]


class Executor:
    """Runs tasks through the worker's tracer; one per audited process."""

    def __init__(self, app: Any, worker: AuditWorker, outbox: Outbox) -> None:
        from celery import signals

        self.app = app
        self.worker = worker
        self.outbox = outbox
        self._traced: set[str] = set()
        self._routes: dict[str, dict[str, Any]] = {}
        self._captures: dict[Any, _Capture] = {}
        signals.task_internal_error.connect(self._on_internal_error, weak=False)
        handler = _TraceLogCapture(self._captures)
        logging.getLogger("celery.app.trace").addHandler(handler)

    def _on_internal_error(self, sender: Any = None, exception: BaseException | None = None,
                           **_: Any) -> None:
        capture = self._captures.get(greenlet.getcurrent())
        if capture is not None and exception is not None:
            capture.errors.append(("tracer", exception))

    def _prepare(self, task: Any) -> None:
        """Build the tracer as the worker's consumer does, with the late hooks watched."""
        if task.name in self._traced:
            return
        from celery.app.trace import build_tracer, task_has_custom

        for hook in _LATE_HOOKS:
            if task_has_custom(task, hook):  # the tracer's own test
                setattr(task, hook, self._watched(hook, getattr(task, hook)))
        task.__trace__ = build_tracer(task.name, task, self.app.loader, self.worker.hostname,
                                      app=self.app)
        self._traced.add(task.name)

    def _watched(self, hook: str, method: Any) -> Any:
        def watched(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                capture = self._captures.get(greenlet.getcurrent())
                if capture is not None:
                    capture.errors.append((hook, exc))
                raise  # the tracer logs it, as on a worker

        return watched

    def _delivery(self, task: Any, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Exchange and routing key of the queue the app routes this task to."""
        if task.name not in self._routes:
            try:
                options = self.app.amqp.router.route({}, task.name, args, kwargs)
            except Exception:
                options = {}
            queue = options.get("queue")
            exchange = getattr(getattr(queue, "exchange", None), "name", "")
            self._routes[task.name] = {
                "exchange": exchange,
                "routing_key": getattr(queue, "routing_key", None) or getattr(queue, "name", None),
                "redelivered": False,
            }
        return self._routes[task.name]

    def _request(self, task: Any, task_id: str, args: list[Any], kwargs: dict[str, Any],
                 ) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        """The message Celery would publish for this call, received as a worker receives it."""
        from celery.worker.request import Request
        from kombu.message import Message
        from kombu.serialization import dumps, prepare_accept_content
        from kombu.serialization import loads as loads_message

        msg = self.app.amqp.create_task_message(
            task_id, task.name, args, kwargs, reply_to=self.app.thread_oid,
            ignore_result=bool(task.ignore_result))
        serializer = task.serializer or self.app.conf.task_serializer
        content_type, content_encoding, body = dumps(  # type: ignore[no-untyped-call]
            msg.body, serializer=serializer)
        message = Message(  # type: ignore[no-untyped-call]
            body=body, content_type=content_type, content_encoding=content_encoding,
            headers=msg.headers, properties=dict(msg.properties),
            delivery_info=self._delivery(task, args, kwargs))
        req = Request(message, app=self.app, hostname=self.worker.hostname, task=task)
        # from here on, what celery.app.trace.fast_trace_task does with the request
        accept = prepare_accept_content(  # type: ignore[no-untyped-call]
            self.app.conf.accept_content)
        args2, kwargs2, embed = loads_message(  # type: ignore[no-untyped-call]
            req.body, req.content_type, req.content_encoding, accept=accept)
        request = req.request_dict
        request.update({"args": args2, "kwargs": kwargs2, "hostname": self.worker.hostname,
                        "is_eager": False}, **embed or {})
        return args2, kwargs2, request

    def _trace(self, task: Any, task_id: str, args: list[Any], kwargs: dict[str, Any],
               request: dict[str, Any]) -> tuple[Any, Any]:
        """The tracer under the hard time limit as the gevent pool sets it (``apply_timeout``):
        a ``gevent.Timeout`` that fires only when the task yields; soft limits are ignored."""
        limit = task.time_limit or self.app.conf.task_time_limit
        if not limit:
            retval, info, _runtime, _text = task.__trace__(task_id, args, kwargs, request)
            return retval, info
        import gevent
        from celery.app.task import Context
        from celery.app.trace import TraceInfo
        from celery.exceptions import TimeLimitExceeded

        timeout = gevent.Timeout(limit)
        try:
            with timeout:
                retval, info, _runtime, _text = task.__trace__(task_id, args, kwargs, request)
                return retval, info
        except gevent.Timeout as fired:
            if fired is not timeout:
                raise
        # what Request.on_timeout does with the hard limit
        exc = TimeLimitExceeded(limit)
        with contextlib.suppress(Exception):  # the run failed either way
            task.backend.mark_as_failure(task_id, exc, request=Context(request))
        return None, TraceInfo("FAILURE", exc)

    def run(self, task: Any, args: list[Any], kwargs: dict[str, Any]) -> RunResult:
        """One run in the current greenlet. ``BaseException`` (SystemExit, a kill) passes."""
        from celery.utils import uuid

        self.app.set_current()  # per greenlet, as each of a worker's task greenlets sees it
        me = greenlet.getcurrent()
        capture = self._captures[me] = _Capture()
        self.outbox.begin()
        retval: Any = None
        info: Any = None
        try:
            stage = "request"
            try:
                self._prepare(task)
                task_id = uuid()
                args2, kwargs2, request = self._request(task, task_id, args, kwargs)
                stage = "tracer"
                retval, info = self._trace(task, task_id, args2, kwargs2, request)
            except Exception as exc:
                capture.errors.append((stage, exc))
        finally:
            published = self.outbox.end()
            self._captures.pop(me, None)
        result = _result(retval, info, capture)
        result.published = published
        return result


_WHERE = {
    "tracer": " (raised in Celery's tracer, outside the task body)",
    "celery": " (logged by Celery's tracer)",
    "request": " (while making the message a worker would receive)",
}


def _describe(error: BaseException) -> str:
    from celery.exceptions import TimeLimitExceeded

    if isinstance(error, TimeLimitExceeded) and error.args:
        return (f"TimeLimitExceeded: the hard time limit ({error.args[0]:g} s) fired, as the "
                "gevent pool fires it (only when the task yields)")
    return f"{type(error).__name__}: {error}"


def _result(retval: Any, info: Any, capture: _Capture) -> RunResult:
    """The tracer's (R, I) as a worker would judge them, plus what it only logged."""
    from celery import states

    if info is not None and info.state == states.FAILURE:
        error = info.retval
        tb = getattr(retval, "traceback", None)  # the ExceptionInfo the tracer built
        return RunResult(states.FAILURE, error=error, error_text=_describe(error),
                         formatted=tb if isinstance(tb, str) else None)
    if capture.errors:
        # what raised beats what was only logged on the way (a failed clean-up, say)
        raised = [e for e in capture.errors if e[0] != "celery"] or capture.errors
        where, error = raised[0]
        return RunResult(states.FAILURE, error=error,
                         error_text=f"{_describe(error)}{_WHERE.get(where, f' (in {where})')}")
    if info is not None:  # RETRY, IGNORED (self.replace), REJECTED
        return RunResult(info.state,
                         retry=str(info.retval) if info.state == states.RETRY else None)
    return RunResult(states.SUCCESS, value=retval)
