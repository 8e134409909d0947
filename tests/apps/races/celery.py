from celery import Celery

app = Celery("races", broker="memory://", include=["races.tasks"])
