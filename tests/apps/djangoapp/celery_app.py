"""The Celery app, configured from Django's settings as Celery's Django guide does.

DJANGO_SETTINGS_MODULE is set before the app is created, so Celery installs its Django
fixup (which closes a task greenlet's connections when the task ends).
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoapp.settings")

app = Celery(
    "djangoapp",
    include=["djangoapp.dbtasks", "djangoapp.localtasks", "djangoapp.ctxtasks"],
)
app.config_from_object("django.conf:settings", namespace="CELERY")
