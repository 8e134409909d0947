"""A small Celery app with its own test suite, for geventcheck's pytest plugin."""
