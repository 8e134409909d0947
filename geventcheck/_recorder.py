"""Record the Celery task calls a test suite makes, as scenario inputs the audit can run.

Real apps' tasks almost all take arguments, and the audit skips a task it has no
inputs for; the suite already calls them with realistic ones. Only the outermost
call is recorded (an eager ``delay`` runs ``apply`` and then the task itself).
"""

from __future__ import annotations

import contextvars
import fcntl
import json
import math
import os
import re
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Recorder", "app_path", "dump_scenario"]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_inside = contextvars.ContextVar("geventcheck_recording", default=False)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    """Inline TOML for a JSON-like value (None has no TOML form: callers leave it out)."""
    if isinstance(value, bool | int | str):  # JSON's forms of these are TOML's too
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ValueError(f"{value!r} has no TOML form")
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}"
                                for k, v in value.items()) + " }"
    raise ValueError(f"{type(value).__name__} has no TOML form")


def dump_scenario(data: dict[str, Any], comments: Iterable[str] = ()) -> str:
    """A scenario document: top-level keys inline, one ``[tasks."name"]`` table per task."""
    lines = ["# Task inputs recorded from the test suite by `pytest --gevent-record`."]
    lines += [f"# {c}" for c in comments]
    for key, value in data.items():
        if key != "tasks":
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for name, table in sorted(data.get("tasks", {}).items()):
        lines.append("")
        lines.append(f"[tasks.{json.dumps(name)}]")
        for key, value in table.items():
            if key == "calls":
                lines.append("calls = [")
                lines.extend(f"    {_toml_value(call)}," for call in value)
                lines.append("]")
            else:
                lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def app_path(app: Any) -> tuple[str, str | None]:
    """``module:attr`` of the module-level name that holds this Celery app, and the folder
    its top-level package lives in (for the audit's ``paths``)."""
    for name, module in sorted(sys.modules.items()):
        try:
            found = next((attr for attr, value in vars(module).items() if value is app), None)
        except TypeError:
            continue
        if found is None or name == "__main__":
            continue
        top = sys.modules.get(name.split(".")[0])
        file = getattr(top, "__file__", None)
        folder = None
        if file:
            folder = os.path.dirname(file)
            if os.path.basename(file) == "__init__.py":
                folder = os.path.dirname(folder)
        return f"{name}:{found}", folder
    return str(app.main), None


def _clean(value: Any) -> Any:
    """The value as JSON would give it back, or ValueError: what the audit can replay."""
    text = json.dumps(value, allow_nan=False)
    back = json.loads(text)
    _toml_value(back)  # None has no TOML form
    if _has_none(back):
        raise ValueError("None has no TOML form")
    return back


def _has_none(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, list):
        return any(_has_none(v) for v in value)
    if isinstance(value, dict):
        return any(_has_none(v) for v in value.values())
    return False


class Recorder:
    """Wraps Celery's ``Task`` entry points for the session; ``write()`` merges into PATH."""

    def __init__(self, path: str, per_task: int) -> None:
        self.path = os.path.abspath(path)
        self.per_task = per_task
        self.calls: dict[str, list[dict[str, Any]]] = {}
        self.skipped: list[str] = []
        self.apps: dict[str, Any] = {}
        self._saved: dict[str, Any] = {}

    def install(self) -> None:
        from celery.app.task import Task

        for name in ("apply_async", "apply", "__call__"):
            original = getattr(Task, name)
            self._saved[name] = original
            setattr(Task, name, self._wrap(name, original))

    def uninstall(self) -> None:
        from celery.app.task import Task

        for name, original in self._saved.items():
            setattr(Task, name, original)
        self._saved.clear()

    def _wrap(self, how: str, original: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self

        def wrapper(task: Any, *a: Any, **kw: Any) -> Any:
            if _inside.get():
                return original(task, *a, **kw)
            token = _inside.set(True)
            try:
                if how == "__call__":
                    recorder.record(task, how, a, kw)
                else:
                    args = a[0] if a else kw.get("args")
                    kwargs = a[1] if len(a) > 1 else kw.get("kwargs")
                    recorder.record(task, how, tuple(args or ()), dict(kwargs or {}))
                return original(task, *a, **kw)
            finally:
                _inside.reset(token)

        wrapper.__name__ = getattr(original, "__name__", how)
        wrapper.__doc__ = original.__doc__
        return wrapper

    def record(self, task: Any, how: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        name = task.name
        if name is None:
            return
        self.apps.setdefault(name, task.app)
        try:
            call = {"args": _clean(list(args)), "kwargs": _clean(kwargs)}
        except (TypeError, ValueError):
            bad = [f"args[{i}]={_short(v)}" for i, v in enumerate(args) if not _ok(v)] + \
                  [f"kwargs[{k!r}]={_short(v)}" for k, v in kwargs.items() if not _ok(v)]
            test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]
            note = (f"{name} ({how}, {test}): not recorded, its arguments cannot be written "
                    f"as JSON: {', '.join(bad) or 'a nested value'}")
            if note not in self.skipped:
                self.skipped.append(note)
            return
        known = self.calls.setdefault(name, [])
        if call not in known and len(known) < self.per_task:
            known.append(call)

    def write(self) -> None:
        """Merge into the file under a lock (pytest-xdist workers write the same file), then
        replace it in one rename, so a reader never sees half a scenario."""
        if not self.calls and not self.skipped:
            return
        folder = os.path.dirname(self.path) or "."
        os.makedirs(folder, exist_ok=True)
        with open(self.path + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data: dict[str, Any] = {}
            comments: list[str] = []
            if os.path.exists(self.path):
                with open(self.path, "rb") as fh:
                    raw = fh.read()
                data = tomllib.loads(raw.decode())
                comments = [line[2:] for line in raw.decode().splitlines()
                            if line.startswith("# ") and ": not recorded" in line]
            if "app" not in data and self.apps:
                spec, top = app_path(next(iter(self.apps.values())))
                data["app"] = spec
                if top:
                    paths = data.setdefault("paths", [])
                    rel = os.path.relpath(top, folder)
                    if rel not in paths:
                        paths.append(rel)
            tasks = data.setdefault("tasks", {})
            for name, calls in self.calls.items():
                known = tasks.setdefault(name, {}).setdefault("calls", [])
                for call in calls:
                    full = {"args": call["args"], "kwargs": call["kwargs"]}
                    if full not in [{"args": c.get("args", []), "kwargs": c.get("kwargs", {})}
                                    for c in known] and len(known) < self.per_task:
                        known.append(call)
            comments += [c for c in self.skipped if c not in comments]
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".scenario-", suffix=".toml")
            with os.fdopen(fd, "w") as out:
                out.write(dump_scenario(data, comments))
            os.replace(tmp, self.path)


def _ok(value: Any) -> bool:
    try:
        _clean(value)
    except (TypeError, ValueError):
        return False
    return True


def _short(value: Any) -> str:
    text = f"{type(value).__name__} {value!r}"
    return text if len(text) <= 60 else text[:57] + "..."
