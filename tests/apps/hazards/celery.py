from celery import Celery

app = Celery("hazards", broker="memory://", include=["hazards.tasks"])
app.conf.task_routes = {"hazards.tasks.cpu_loop": {"queue": "cpu"}}
