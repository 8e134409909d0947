"""psycopg2 waits for the server inside libpq; psycogreen's wait callback makes it yield."""

from __future__ import annotations


def patch_psycopg2() -> None:
    """Install psycogreen's gevent wait callback (process-wide, idempotent)."""
    try:
        import psycopg2.extensions
        from psycogreen.gevent import patch_psycopg
    except ImportError as exc:
        raise ImportError(
            f"the psycopg2 shim needs psycopg2 and psycogreen ({exc.name} is missing): "
            "pip install 'geventcheck[postgres]'"
        ) from exc
    if not hasattr(psycopg2.extensions, "set_wait_callback"):
        raise ImportError(
            f"psycopg2 {psycopg2.__version__} has no set_wait_callback(); need psycopg2 >= 2.2"
        )
    if not is_patched():
        patch_psycopg()


def is_patched() -> bool:
    try:
        import psycopg2.extensions
    except ImportError:
        return False
    return psycopg2.extensions.get_wait_callback() is not None
