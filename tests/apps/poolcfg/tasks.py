from .celery import app


@app.task(soft_time_limit=30)
def slow_report():
    return "done"
