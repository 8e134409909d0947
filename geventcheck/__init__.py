"""geventcheck: is this Celery task safe to run on a gevent worker?

Kept import-light on purpose: the audited child imports this package right
after ``gevent.monkey.patch_all()``, and nothing here may load sockets,
threads or the app before that.
"""

from ._model import (
    Driver,
    Environment,
    Finding,
    Report,
    Settings,
    Stats,
    TaskReport,
    report_to_dict,
)
from ._version import __version__

__all__ = [
    "Driver",
    "Environment",
    "Finding",
    "Report",
    "Settings",
    "Stats",
    "TaskReport",
    "__version__",
    "report_to_dict",
]
