"""Django settings of ExamX. Everything that differs between deployments comes from the
environment; without any, the project runs on a throwaway SQLite database."""

import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("EXAMX_SECRET_KEY", "examx-demo-secret-key-not-for-production")
DEBUG = os.environ.get("EXAMX_DEBUG") == "1"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "examx.urls"
USE_TZ = True
TIME_ZONE = "Asia/Kolkata"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "admin_app",
    "ai_app",
    "ai_question_bank_generator",
    "student_app",
    "superadmin_app",
    "teacher_app",
    "user_app",
    "utility",
]

# The demo keeps its database and uploads in a folder of its own per process, so two
# workers (or two audits) never share one; EXAMX_DATA_DIR pins it.
DATA_DIR = Path(os.environ.get("EXAMX_DATA_DIR")
                or Path(tempfile.gettempdir()) / f"examx-{os.getpid()}")
MEDIA_ROOT = DATA_DIR / "media"
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _databases(url):
    if not url:
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "db.sqlite3",
            "OPTIONS": {"timeout": 5, "init_command": "PRAGMA synchronous=OFF;"},
        }
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": parts.path}
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"DATABASE_URL: unsupported scheme {parts.scheme!r}")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


DATABASES = {"default": _databases(os.environ.get("DATABASE_URL"))}
# A DSN with the rights to refresh materialized views (PostgreSQL deployments only).
PG_DSN = os.environ.get("PG_DSN", "")

if os.environ.get("REDIS_URL"):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                          "LOCATION": os.environ["REDIS_URL"]}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
EMAIL_TIMEOUT = 20
DEFAULT_FROM_EMAIL = "ExamX <no-reply@examx.example>"
FRONTEND_URL = os.environ.get("FRONTEND_URL", "https://app.examx.example")

OPENAI_BASE_URL = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")
OPENAI_API_KEY = os.environ.get("OPENAI_API_KEY", "sk-examx-demo")
OPENAI_MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
JUDGE0_URL = os.environ.get("JUDGE0_URL", "http://judge0.internal:2358")
PHP_EVALUATOR_URL = os.environ.get("PHP_EVALUATOR_URL", "http://php-eval.internal:8080")
STORAGE_URL = os.environ.get("STORAGE_URL", "http://minio.internal:9000")
STORAGE_BUCKET = os.environ.get("STORAGE_BUCKET", "examx-papers")

# Migrate and load the demo data when a worker starts (see examx/celery.py).
EXAMX_DEMO_DATA = os.environ.get("EXAMX_DEMO_DATA", "1" if "DATABASE_URL" not in os.environ
                                 else "0") == "1"
# How long auto-submit waits for the students' last autosaves when an exam ends.
EXAMX_AUTOSAVE_GRACE_S = float(os.environ.get("EXAMX_AUTOSAVE_GRACE_S", "3"))
EXAMX_DEFAULT_TENANT = os.environ.get("EXAMX_DEFAULT_TENANT", "Greenfield Public School")

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "memory://")
CELERY_TASK_IGNORE_RESULT = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"examx": {"handlers": ["console"], "level": "WARNING"}},
}
