"""psycopg2 waits for the server inside libpq; psycogreen's wait callback makes it yield.

The callback is process-wide (``psycopg2.extensions.set_wait_callback``), so it works for
connections opened before and after ``patch()``.
"""

from __future__ import annotations

MESSAGES = {
    "missing": "the psycopg2 shim needs psycopg2 and psycogreen ({name} is missing): "
               "pip install 'geventcheck[postgres]'",
    "no-hook": "psycopg2 {version} has no set_wait_callback(); the psycopg2 shim needs "
               "psycopg2 >= 2.2",
    "other-callback": "psycopg2 already has a different wait callback ({where}); the psycopg2 "
                      "shim does not replace it",
}


def patch() -> None:
    """Install psycogreen's gevent wait callback; idempotent."""
    try:
        import psycopg2
        import psycopg2.extensions
        from psycogreen.gevent import gevent_wait_callback
    except ImportError as exc:
        raise ImportError(MESSAGES["missing"].format(name=exc.name)) from exc
    ext = psycopg2.extensions
    if not hasattr(ext, "set_wait_callback") or not hasattr(ext, "get_wait_callback"):
        raise ImportError(MESSAGES["no-hook"].format(version=psycopg2.__version__.split()[0]))
    current = ext.get_wait_callback()
    if current is gevent_wait_callback:
        return
    if current is not None:
        where = f"{getattr(current, '__module__', '?')}.{getattr(current, '__name__', '?')}"
        raise ImportError(MESSAGES["other-callback"].format(where=where))
    ext.set_wait_callback(gevent_wait_callback)


def is_applied() -> bool:
    """True when psycopg2 really has psycogreen's callback (asked from psycopg2 itself)."""
    import sys

    ext = sys.modules.get("psycopg2.extensions")
    green = sys.modules.get("psycogreen.gevent")
    if ext is None or green is None:
        return False
    return bool(ext.get_wait_callback() is getattr(green, "gevent_wait_callback", None))


# The names of geventcheck 0.1.
patch_psycopg2 = patch
is_patched = is_applied


def unpatch() -> None:
    """Remove psycogreen's callback (only ours): for rolling back a group of shims."""
    if is_applied():
        import psycopg2.extensions

        psycopg2.extensions.set_wait_callback(None)
