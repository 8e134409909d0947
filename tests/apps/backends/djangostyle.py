"""Settings the Django way: an object read with namespace="CELERY", upper-case names."""

from celery import Celery

from ._tasks import register


class Settings:
    CELERY_BROKER_URL = "redis://127.0.0.1:6379/15"
    CELERY_RESULT_BACKEND = "redis://127.0.0.1:6379/15"
    CELERY_RESULT_BACKEND_THREAD_SAFE = True
    CELERY_BROKER_POOL_LIMIT = 4


app = Celery("backends.djangostyle")
app.config_from_object(Settings, namespace="CELERY")
register(app)
