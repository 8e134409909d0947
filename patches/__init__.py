"""Shims that make blocking libraries cooperate with gevent, one module per library.

Each module has one ``patch_<lib>()`` that is idempotent, raises a clear
``ImportError`` when the library or its hook is missing, and an ``is_patched()``.
Installed as ``geventcheck.patches``; the audit applies them with ``--shim NAME``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

# shim name -> (module, function): the names users pass to --shim.
SHIMS: dict[str, tuple[str, str]] = {
    "psycopg2": ("geventcheck.patches.psycopg2", "patch_psycopg2"),
    "mysqldb": ("geventcheck.patches.mysqldb", "patch_mysqldb"),
    "grpc": ("geventcheck.patches.grpc", "patch_grpc"),
}


def apply(name: str) -> None:
    """Apply the shim called ``name`` (see ``SHIMS``)."""
    try:
        module, func = SHIMS[name]
    except KeyError:
        raise ValueError(f"unknown shim {name!r}; known: {', '.join(sorted(SHIMS))}") from None
    patch: Callable[[], None] = getattr(importlib.import_module(module), func)
    patch()


__all__ = ["SHIMS", "apply"]
