"""ExamX: exams, question banks and AI evaluation for schools (Django + Celery).

As in every Django project that uses Celery, the app is exposed here so that
``celery -A examx worker`` (and ``geventcheck audit -A examx``) find it.
"""

from .celery import app

__all__ = ["app"]
