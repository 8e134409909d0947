"""A SQLAlchemy database result backend (SQLite file named by BACKENDS_DB)."""

import os

from celery import Celery

from ._tasks import register

app = Celery("backends.db_app", broker="redis://127.0.0.1:6379/15",
             backend="db+sqlite:///" + os.environ.get("BACKENDS_DB", "results.sqlite"))
register(app)
