from celery import Celery

app = Celery("children", broker="memory://", include=["children.tasks"])
