from celery import Celery

app = Celery("hooks", broker="memory://", include=["hooks.tasks"])
