"""psycopg 3 needs no shim: imported after monkey-patching it picks a cooperative wait.

It decides once, when ``psycopg.waiting`` is imported: in a patched process it takes a
Python wait function that yields to the hub; imported before patching (or with
``PSYCOPG_WAIT_FUNC=wait_c``) it takes the C ``wait_c``, which blocks the hub, and nothing
short of re-importing can change that. ``patch()`` therefore only checks, and refuses with
the import-order fix when it is too late.
"""

from __future__ import annotations

import os
import sys

MESSAGES = {
    "blocking": "psycopg {version} chose the C wait function wait_c, which blocks the hub: "
                "{why}. psycopg decides when psycopg.waiting is first imported, so the fix is "
                "the import order: patch first (celery -A app worker -P gevent patches before "
                "the app loads; in a custom entry point call gevent.monkey.patch_all() before "
                "anything imports psycopg or Django)",
    "forced": "PSYCOPG_WAIT_FUNC={value} forces it; unset it",
    "early": "psycopg was imported before gevent patched the process",
}


def patch() -> None:
    """Check psycopg's wait function; refuses (ImportError) when it is the blocking one."""
    waiting = sys.modules.get("psycopg.waiting")
    if waiting is None:
        return  # not imported yet: it will choose a cooperative wait when it is
    if not is_applied():
        forced = os.environ.get("PSYCOPG_WAIT_FUNC")
        why = MESSAGES["forced"].format(value=forced) if forced else MESSAGES["early"]
        version = getattr(sys.modules.get("psycopg"), "__version__", "?")
        raise ImportError(MESSAGES["blocking"].format(version=version, why=why))


def is_applied() -> bool:
    """True when psycopg is not loaded yet, or loaded with a cooperative wait function."""
    waiting = sys.modules.get("psycopg.waiting")
    if waiting is None:
        return True
    return getattr(getattr(waiting, "wait", None), "__name__", "") != "wait_c"


patch_psycopg = patch
is_patched = is_applied
