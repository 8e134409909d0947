"""A Django project's Celery app, set up as Celery's Django guide says (so with its fixup)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "execdjango.settings")

app = Celery("execdjango", include=["execdjango.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")
