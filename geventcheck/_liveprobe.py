"""The app the doctor's --live worker runs: the user's app plus one probe task.

Loaded by ``celery -A geventcheck._liveprobe worker ...``. The argv scan that
decides patching sees the user's worker arguments unchanged.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from celery.app.utils import find_app

app: Any = find_app(os.environ["GEVENTCHECK_TARGET_APP"])


@app.task(name="geventcheck.live_probe")  # type: ignore[untyped-decorator]
def live_probe(path: str) -> None:
    """Say, from inside the running worker, how it really runs tasks."""
    monkey = sys.modules.get("gevent.monkey")
    import greenlet

    current = greenlet.getcurrent()
    info = {
        "patched": bool(monkey and monkey.is_module_patched("socket")),
        "in_greenlet": current.parent is not None,
        "pid": os.getpid(),
    }
    with open(path + ".tmp", "w") as fh:
        json.dump(info, fh)
    os.replace(path + ".tmp", path)
