"""Which files are the audited app's own code, as opposed to Python, libraries or us."""

from __future__ import annotations

import functools
import os
import sysconfig

_LIBRARY_ROOTS = tuple(
    sorted(
        {
            os.path.realpath(p) + os.sep
            for key in ("stdlib", "platstdlib", "purelib", "platlib")
            if (p := sysconfig.get_paths().get(key))
        }
    )
)
_PACKAGE = os.path.dirname(os.path.realpath(__file__))
# In a source checkout the shims live beside the package, in patches/.
_OWN_ROOTS = (_PACKAGE + os.sep, os.path.join(os.path.dirname(_PACKAGE), "patches") + os.sep)


@functools.lru_cache(maxsize=4096)
def is_audited_file(path: str, app_roots: tuple[str, ...] = ()) -> bool:
    """True for the app's own code: not the stdlib, not an installed library, not us."""
    if path.startswith("<"):
        return False
    real = os.path.realpath(path)
    if app_roots and real.startswith(app_roots):
        return True
    return not real.startswith(_LIBRARY_ROOTS) and not real.startswith(_OWN_ROOTS)


def relative(path: str) -> str:
    """A path relative to the working directory when it lies below it."""
    try:
        rel = os.path.relpath(path)
    except (ValueError, OSError):  # OSError: a task removed the working directory
        return path
    return path if rel.startswith("..") else rel
