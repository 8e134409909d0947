import os
import time

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopsite.settings")
app = Celery("shopsite", broker="memory://")
app.config_from_object("django.conf:settings", namespace="CELERY")


@app.task
def notify():
    from django.conf import settings

    time.sleep(0.02)
    return settings.USE_TZ
