"""grpc's C core needs to be told to run its I/O on gevent."""

from __future__ import annotations

import sys


def patch_grpc() -> None:
    """Call ``grpc.experimental.gevent.init_gevent()``: after patching, before any grpc object."""
    try:
        from grpc.experimental import gevent as grpc_gevent
    except ImportError as exc:
        raise ImportError(
            "the grpc shim needs grpcio >= 1.24 with grpc.experimental.gevent"
        ) from exc
    if not is_patched():
        grpc_gevent.init_gevent()


def is_patched() -> bool:
    cygrpc = sys.modules.get("grpc._cython.cygrpc")
    return bool(cygrpc is not None and getattr(cygrpc, "g_gevent_activated", False))
