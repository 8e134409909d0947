"""Tasks do not judge each other: process state goes back between tasks, in any order.

A task that installs a driver hook (psycogreen's wait callback), changes the default
socket timeout, the hub's threadpool, logging, or patches a function onto a module
changes every task that runs after it in the same process: a later task that uses
psycopg2 looks cooperative only because an earlier one made it so. After each task
the runner compares the process with the state it had before the first task, puts
back whatever differs and reports it against the task that left it. ``--shuffle``
runs the tasks in a random order that a seed reproduces, to show that no verdict
depends on it.
"""

from __future__ import annotations

import random
import sys
import types
from typing import Any, TypeVar

from .._model import Finding
from .._paths import is_audited_file, relative
from ..detectors import _snapshot

T = TypeVar("T")

# Packages whose module attributes change by design while an audit runs.
_OWN = frozenset({"geventcheck", "gevent", "greenlet", "__main__", "__mp_main__"})


def ordered(items: list[T], seed: int | None) -> list[T]:
    """The tasks in name order, or shuffled reproducibly when a seed is given."""
    out = list(items)
    if seed is not None:
        random.Random(seed).shuffle(out)
    return out


class TaskIsolation:
    """The state before the first task, put back after every task."""

    def __init__(self, roots: tuple[str, ...]) -> None:
        self.roots = roots
        self.clean = _snapshot.take()
        self.modules = _snapshot.take_modules(self._skip)
        self.known = set(sys.modules)

    def _skip(self, name: str, module: types.ModuleType) -> bool:
        """The app's own modules (their globals are judged by the bytecode analysis) and
        geventcheck's and gevent's."""
        if name.split(".", 1)[0] in _OWN:
            return True
        path = vars(module).get("__file__")
        return isinstance(path, str) and is_audited_file(path, self.roots)

    def _is_app_code(self, value: Any) -> bool:
        """A function or class of the app's own code; read through the type only, so a
        lazy proxy is never evaluated."""
        if type(value) is types.FunctionType:
            return is_audited_file(value.__code__.co_filename, self.roots)
        if issubclass(type(value), type):
            module = sys.modules.get(vars(value).get("__module__", ""))
            path = getattr(module, "__file__", None)
            return isinstance(path, str) and is_audited_file(path, self.roots)
        return False

    def after_task(self) -> list[Finding]:
        """Put back what the task left changed, and say what it was."""
        left = _snapshot.diff(self.clean, _snapshot.take())
        failed = {c.key for c in _snapshot.restore(left)}
        patched = _snapshot.module_changes(self.modules, self.known, self._is_app_code)
        _snapshot.restore_modules(self.modules, patched)
        self._watch_new_modules()
        return [self._finding(change, change.key in failed) for change in [*left, *patched]]

    def _watch_new_modules(self) -> None:
        """Modules the task imported: their attributes as loaded are the clean state."""
        new = {name for name in list(sys.modules) if name not in self.known}
        self.known |= new
        if new:
            self.modules.update(_snapshot.take_modules(
                lambda name, module: name not in new or self._skip(name, module)))

    def _finding(self, change: _snapshot.Change, failed: bool) -> Finding:
        new = change.after.obj if isinstance(change.after, _snapshot.Same) else None
        site = _definition(new) if self._is_app_code(new) else None
        text = (f"{change.describe()} and left it so after its runs: on a gevent worker every "
                "task that runs after it in the process inherits it, so the audit put it back "
                "before the next task" if not failed else
                f"{change.describe()} and left it so after its runs; the audit could not put "
                "it back, so the verdicts of the tasks audited after it may depend on it")
        return Finding(
            "global-state", "warning", text,
            file=relative(site[0]) if site else None, line=site[1] if site else None,
            function=site[2] if site else None,
            fix=_snapshot.FIXES.get(_snapshot.family(change.key)), phase="isolation")


def _definition(value: Any) -> tuple[str, int, str] | None:
    """Where a function patched onto a module was defined, when it is a plain function."""
    if type(value) is not types.FunctionType:
        return None
    code = value.__code__
    return code.co_filename, code.co_firstlineno, code.co_name
