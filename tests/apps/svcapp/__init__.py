"""Tasks that call an OpenAI-like API, send mail and query PostgreSQL, the good and the bad way."""

from .celery import app

__all__ = ["app"]
