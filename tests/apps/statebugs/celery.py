from celery import Celery

app = Celery("statebugs", broker="memory://", include=["statebugs.tasks"])
