"""A small Django project with a Celery app whose tasks hold PostgreSQL connections,
keep state in thread-locals and read context variables, each hazard beside its fix.

Nothing is imported here: the settings module must load without the Celery app.
"""
