"""Tasks that behave differently under ``Task.apply`` than on a real gevent worker."""

from celery import Task, chain, chord, group, shared_task
from celery.canvas import StampingVisitor

from .celery import app


@shared_task
def add(x, y):
    return x + y


@shared_task
def total(values):
    return sum(values)


@app.task
def builds_chain():
    chain(add.s(1, 2), add.s(3)).apply_async()
    return "chained"


@shared_task
def builds_group():
    group(add.s(i, i) for i in range(3)).apply_async()
    return "grouped"


@shared_task
def builds_chord():
    # needs the app's result backend: Celery's fallback app has none
    chord([add.s(1, 1), add.s(2, 2)], total.s()).apply_async()
    return "chord"


@app.task(bind=True)
def replaced(self):
    raise self.replace(add.s(2, 3))


@app.task(bind=True, max_retries=3)
def retries_once(self):
    if self.request.retries < 1:
        raise self.retry(countdown=0, exc=ConnectionError("flaky upstream"))
    return "ok on retry"


@app.task
def publishes_from_a_greenlet():
    import gevent

    gevent.spawn(add.delay, 4, 4).join()  # counted for the task that spawned it
    return "spawned"


@app.task(bind=True)
def sends_by_name(self):
    self.app.send_task("execapp.tasks.add", args=(1, 2))
    return "sent"


class Monitored(StampingVisitor):
    def on_signature(self, sig, **headers):
        return {"monitoring_id": "m-1"}


@app.task(bind=True)
def stamps(self):
    sig = add.s(1, 1)
    sig.stamp(visitor=Monitored())
    sig.apply_async()
    # a worker's request carries what the message said
    return [self.request.argsrepr, self.request.hostname is not None]


@app.task
def fails():
    raise ValueError("bad input file")


class RefusesToStart(Task):
    def before_start(self, task_id, args, kwargs):
        raise RuntimeError("before_start refused")


@app.task(base=RefusesToStart)
def hook_before_start():
    return "never"


class FailsAfterReturn(Task):
    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        raise RuntimeError("after_return failed")


@app.task(base=FailsAfterReturn)
def hook_after_return():
    return "ran"


class FailsOnSuccess(Task):
    def on_success(self, retval, task_id, args, kwargs):
        raise RuntimeError("on_success failed")


@app.task(base=FailsOnSuccess)
def hook_on_success():
    return "ran"


@app.task
def unstorable_result():
    return object()  # the JSON result backend cannot store it


@app.task(time_limit=0.2)
def outlives_its_time_limit():
    import time

    time.sleep(1)  # cooperative: the gevent pool's hard limit fires here
    return "too late"
