"""Which files are the audited app's own code, as opposed to Python, libraries or us."""

from __future__ import annotations

import functools
import os
import sysconfig
from collections.abc import Sequence
from typing import Protocol, TypeVar

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


_STDLIB_ROOTS = tuple(
    sorted(
        {
            os.path.realpath(p) + os.sep
            for key in ("stdlib", "platstdlib")
            if (p := sysconfig.get_paths().get(key))
        }
    )
)


@functools.lru_cache(maxsize=4096)
def is_own_file(path: str) -> bool:
    """geventcheck's own code (the package and its shims)."""
    return os.path.realpath(path).startswith(_OWN_ROOTS)


@functools.lru_cache(maxsize=4096)
def is_stdlib_file(path: str) -> bool:
    real = os.path.realpath(path)
    return (path.startswith("<") or real.startswith(_STDLIB_ROOTS)) and not any(
        part in real for part in ("site-packages", "dist-packages"))


class _Frame(Protocol):
    @property
    def file(self) -> str: ...
    @property
    def function(self) -> str: ...


F = TypeVar("F", bound=_Frame)


def app_frame(stack: Sequence[F], app_roots: tuple[str, ...] = ()) -> F | None:
    """The innermost frame in the app's own code (stack innermost first); a comprehension
    or lambda is a frame of its own, so the function that holds it is named instead.
    Falls back to the innermost frame when no frame is the app's."""
    for frame in stack:
        if is_audited_file(frame.file, app_roots) and not frame.function.startswith("<"):
            return frame
    return stack[0] if stack else None


def caller_is_own(stack: Sequence[_Frame]) -> bool:
    """The innermost frame outside the standard library is geventcheck's: the work was the
    audit's (a probe, a hook, a traceback it formats), not the task's."""
    for frame in stack:
        if not is_stdlib_file(frame.file):
            return is_own_file(frame.file)
    return False
