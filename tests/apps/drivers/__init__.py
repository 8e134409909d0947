"""A Celery app whose tasks really wait on PostgreSQL, MariaDB and Redis, one module per driver.

Each driver is imported at the top of its own module (so the audit's driver inventory sees
it once the app is loaded) and nowhere else: a shim that turns ``MySQLdb`` into PyMySQL must
not change what the other modules get.
"""

from .celery import app

__all__ = ["app"]
