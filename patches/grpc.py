"""grpc's C core runs its own I/O threads; ``init_gevent()`` makes it use gevent's loop.

It has to be called after monkey-patching and before any channel or server exists.
"""

from __future__ import annotations

import gc
import sys

MESSAGES = {
    "missing": "the grpc shim needs grpcio >= 1.24 with grpc.experimental.gevent "
               "(grpcio {version} is installed)",
    "too-late": "{count} gRPC object(s) ({kinds}) already exist: grpc's gevent mode must start "
                "before any channel or server is created (apply the grpc shim at the top of "
                "celery.py, before the tasks are imported)",
}

# gRPC objects that pin the C core to its own threads once created.
_OBJECT_TYPES = {"grpc._cython.cygrpc.Channel", "grpc._cython.cygrpc.Server",
                 "grpc._server._Server"}


def patch() -> None:
    """Call ``grpc.experimental.gevent.init_gevent()``; idempotent; refuses when too late."""
    try:
        import grpc
        from grpc.experimental import gevent as grpc_gevent
    except ImportError as exc:
        version = "?"
        if "grpc" in sys.modules:
            version = getattr(sys.modules["grpc"], "__version__", "?")
        else:
            from importlib import metadata

            try:
                version = metadata.version("grpcio")
            except metadata.PackageNotFoundError:
                version = "none"
        raise ImportError(MESSAGES["missing"].format(version=version)) from exc
    if is_applied():
        return
    existing = _existing_objects(grpc)
    if existing:
        kinds = ", ".join(sorted({type(o).__qualname__ for o in existing}))
        raise ImportError(MESSAGES["too-late"].format(count=len(existing), kinds=kinds))
    grpc_gevent.init_gevent()


def _existing_objects(grpc: object) -> list[object]:
    """Channels and servers alive in this process (the only time gc is walked: once)."""
    found = []
    for obj in gc.get_objects():
        module = getattr(type(obj), "__module__", "")
        if isinstance(module, str) and f"{module}.{type(obj).__name__}" in _OBJECT_TYPES:
            found.append(obj)
    return found


def is_applied() -> bool:
    """True once grpc's C core was switched to gevent."""
    cygrpc = sys.modules.get("grpc._cython.cygrpc")
    return bool(cygrpc is not None and getattr(cygrpc, "g_gevent_activated", False))


patch_grpc = patch
is_patched = is_applied
