from celery import Celery

app = Celery("workerapp", broker="memory://", include=["workerapp.tasks"])
app.conf.task_routes = {"workerapp.tasks.cpu_burn": {"queue": "cpu"}}
