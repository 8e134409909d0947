from celery import Celery

app = Celery("demoapp", broker="memory://", include=["demoapp.tasks"])
app.conf.task_default_queue = "default"
app.conf.task_routes = {
    "demoapp.tasks.render_invoice_pdf": {"queue": "reports"},
    "demoapp.tasks.hash_passwords": {"queue": "reports"},
}
