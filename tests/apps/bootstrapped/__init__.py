"""A Celery app with the geventcheck bootstrap line, for real workers (gevent and prefork).

The broker, the queue and the pool setting come from the environment so each test gets its
own queue on the real Redis.
"""

from .celery import app

__all__ = ["app"]
