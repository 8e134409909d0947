"""A small shop's Celery app with the usual mix: some tasks wait, some compute, some block."""

from .celery import app

__all__ = ["app"]
