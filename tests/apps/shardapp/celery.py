from celery import Celery

app = Celery("shardapp", broker="memory://", include=["shardapp.tasks"])
app.conf.task_routes = {"shardapp.tasks.cpu_burn": {"queue": "cpu"}}
