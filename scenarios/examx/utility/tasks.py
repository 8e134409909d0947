"""Operational tasks: health checks run by the monitoring beat."""

import time

from celery import shared_task
from django.core.cache import cache
from django.db import connections


@shared_task
def check_db_connections():
    report = {}
    for alias in connections:
        started = time.perf_counter()
        try:
            with connections[alias].cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
            report[alias] = {"ok": True, "vendor": connections[alias].vendor,
                             "ms": round((time.perf_counter() - started) * 1000, 1)}
        except Exception as exc:
            report[alias] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    cache.set("health:ping", "pong", timeout=30)
    report["cache"] = {"ok": cache.get("health:ping") == "pong"}
    return {alias: entry["ok"] for alias, entry in report.items()}
