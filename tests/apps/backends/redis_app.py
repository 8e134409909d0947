"""Redis broker and result backend, Celery's defaults otherwise."""

from celery import Celery

from ._tasks import register

app = Celery("backends.redis_app", broker="redis://127.0.0.1:6379/15",
             backend="redis://127.0.0.1:6379/15")
register(app)
