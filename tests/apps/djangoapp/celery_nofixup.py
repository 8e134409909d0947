"""The same project, but its Celery app is created before DJANGO_SETTINGS_MODULE is set.

Celery decides whether to install its Django fixup when the app is created, so this app
has none: nothing closes a task's database connections when the task ends.
"""

import os

from celery import Celery

app = Celery("djangoapp_nofixup", broker="memory://", include=["djangoapp.dbtasks"])

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoapp.settings")
