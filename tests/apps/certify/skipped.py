"""Every task needs arguments and no scenario gives any: nothing can be certified."""

from celery import Celery

app = Celery("skipped", broker="memory://")


@app.task
def resize(image_id):
    return image_id


@app.task
def notify(user_id, text):
    return user_id, text
