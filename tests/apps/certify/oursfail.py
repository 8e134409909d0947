"""Stands in for a bug in geventcheck's own start-up code, which the audit must own up to.

Loading this app breaks the hub monitor's start, so the audited process fails in
geventcheck's code after listing the tasks and before running one.
"""

from celery import Celery

from geventcheck.detectors import _hub

app = Celery("oursfail", broker="memory://")
_hub.HubMonitor.start = None  # type: ignore[assignment,method-assign]


@app.task
def fine():
    return "ok"
