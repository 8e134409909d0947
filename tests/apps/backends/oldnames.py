"""Celery 3 setting names: CELERY_RESULT_BACKEND, BROKER_POOL_LIMIT, and no namespace."""

from celery import Celery

from ._tasks import register


class Settings:
    BROKER_URL = "redis://127.0.0.1:6379/15"
    CELERY_RESULT_BACKEND = "redis://127.0.0.1:6379/15"
    BROKER_POOL_LIMIT = 4
    CELERYD_TASK_SOFT_TIME_LIMIT = 30


app = Celery("backends.oldnames")
app.config_from_object(Settings)
register(app)
