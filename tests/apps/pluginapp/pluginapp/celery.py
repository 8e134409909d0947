"""The app: an in-memory broker, so its suite needs no server."""

from celery import Celery

app = Celery("pluginapp", broker="memory://", backend="cache+memory://",
             include=["pluginapp.tasks"])
