SECRET_KEY = "test-only"
INSTALLED_APPS = ["django.contrib.contenttypes", "geventcheck.contrib.django"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
GEVENTCHECK_APP = "shopsite.celery_app"
