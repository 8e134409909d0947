"""redis-py's default pool allows 100 connections and raises "Too many connections" beyond.

A gevent worker at concurrency 150 runs 150 tasks on one client, so the 101st raises
instead of waiting. ``patch(concurrency)`` makes clients built without their own pool
use a ``BlockingConnectionPool`` sized for the worker (extra greenlets wait for a free
connection, cooperatively), and raises the limit of pools that already exist with the
default size. Pools the app sized itself are left alone.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

# redis-py's ConnectionPool default (redis/connection.py: max_connections or 100).
DEFAULT_LIMIT = 100

MESSAGES = {
    "missing": "the redis shim needs redis-py: pip install 'geventcheck[redis]'",
    "no-hook": "redis-py {version} has no redis.client.ConnectionPool or BlockingConnectionPool; "
               "the redis shim needs redis-py >= 4",
    "concurrency": "the redis shim needs the worker's concurrency, a positive integer "
                   "(got {value!r})",
}

_state: dict[str, Any] = {"original": None, "limit": None}


def _sized_pool_class(base: type, limit: int) -> type:
    class GeventSizedPool(base):  # type: ignore[misc]
        """A blocking pool with room for every greenlet of the worker."""

        def __init__(self, max_connections: int | None = None, **kwargs: Any) -> None:
            super().__init__(max_connections=max_connections or limit, **kwargs)

    GeventSizedPool.__module__ = __name__
    return GeventSizedPool


def patch(concurrency: int = DEFAULT_LIMIT) -> None:
    """Size redis pools for ``concurrency`` greenlets; idempotent, raises only the limit."""
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency <= 0:
        raise ValueError(MESSAGES["concurrency"].format(value=concurrency))
    try:
        import redis
        import redis.client
        import redis.connection
    except ImportError as exc:
        raise ImportError(MESSAGES["missing"]) from exc
    blocking = getattr(redis.connection, "BlockingConnectionPool", None)
    if blocking is None or not hasattr(redis.client, "ConnectionPool"):
        raise ImportError(MESSAGES["no-hook"].format(version=redis.__version__))
    current = _state["limit"] or 0
    _raise_default_pools(redis.connection.ConnectionPool, concurrency)
    if concurrency <= max(DEFAULT_LIMIT, current):
        return  # the default (or an earlier, larger patch) already has room
    if _state["original"] is None:
        _state["original"] = redis.client.ConnectionPool
    redis.client.ConnectionPool = _sized_pool_class(blocking, concurrency)
    _state["limit"] = concurrency


def _raise_default_pools(pool_type: type, concurrency: int) -> None:
    """Pools created before patching, with the library default, get room for the worker."""
    if concurrency <= DEFAULT_LIMIT:
        return
    for obj in gc.get_objects():
        if type(obj) is pool_type and getattr(obj, "max_connections", None) == DEFAULT_LIMIT:
            setattr(obj, "max_connections", concurrency)  # noqa: B010 - any pool type


def unpatch() -> None:
    """Give redis.client its own pool class back (new clients only)."""
    client: Any = sys.modules.get("redis.client")
    if client is not None and _state["original"] is not None:
        client.ConnectionPool = _state["original"]
    _state["original"] = _state["limit"] = None


def is_applied(concurrency: int | None = None) -> bool:
    """True when new clients get room for ``concurrency`` (default: the patched size)."""
    client = sys.modules.get("redis.client")
    if client is None:
        return False
    if concurrency is not None and concurrency <= DEFAULT_LIMIT:
        return True
    limit = _state["limit"]
    return bool(limit is not None and client.ConnectionPool is not _state["original"]
                and (concurrency is None or limit >= concurrency))


def limit() -> int:
    """How many connections a client built now may open."""
    return int(_state["limit"] or DEFAULT_LIMIT)


patch_redis = patch
is_patched = is_applied
