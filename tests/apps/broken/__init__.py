from celery import Celery

app = Celery("broken", broker="memory://", include=["broken.tasks"])
