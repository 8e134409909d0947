"""Django settings: this machine's PostgreSQL (unless PG* variables say otherwise)."""

import os

SECRET_KEY = "geventcheck-tests-only"
USE_TZ = True
INSTALLED_APPS: list[str] = []

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
        "NAME": os.environ.get("PGDATABASE", "test"),
        "USER": os.environ.get("PGUSER", "postgres"),
        "PASSWORD": os.environ.get("PGPASSWORD", ""),
    }
}

CELERY_BROKER_URL = "memory://"
