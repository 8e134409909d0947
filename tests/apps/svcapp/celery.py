from celery import Celery

app = Celery("svcapp", broker="memory://", include=["svcapp.tasks"])
