"""Loading a Celery app the way ``celery -A`` does, and listing its tasks.

Runs inside the patched child. Any failure becomes one ``AppLoadError`` line
that names the module and, for code errors, the file and line.
"""

from __future__ import annotations

import fnmatch
import inspect
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any

from .._paths import relative


class AppLoadError(Exception):
    """The app could not be loaded; the message is the one line the user sees."""


@dataclass(frozen=True)
class TaskInfo:
    name: str
    queue: str | None
    required: tuple[str, ...]
    module: str | None

    @property
    def needs_args(self) -> bool:
        return bool(self.required)


def _where(exc: BaseException) -> str:
    """file:line of the innermost frame outside the import machinery."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{relative(exc.filename)}:{exc.lineno}: "
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__)
        if "importlib" not in f.filename and "/celery/" not in f.filename
        and "geventcheck" not in f.filename
    ]
    if not frames:
        return ""
    last = frames[-1]
    return f"{relative(last.filename)}:{last.lineno}: "


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg}"
    return f"{type(exc).__name__}: {exc}"


def load_app(spec: str, django_settings: str | None = None) -> Any:
    """Resolve ``MODULE[:ATTR]`` with Celery's own rules, then import the task modules."""
    from celery import Celery
    from celery.app.utils import find_app

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    if django_settings:
        os.environ["DJANGO_SETTINGS_MODULE"] = django_settings
    try:
        app = find_app(spec)
    except ModuleNotFoundError as exc:
        if exc.name and spec.split(":", maxsplit=1)[0].startswith(exc.name):
            raise AppLoadError(f"cannot load app {spec!r}: no module named {exc.name!r} "
                               f"(run from the project's directory or set PYTHONPATH)") from None
        raise AppLoadError(f"cannot load app {spec!r}: {_where(exc)}{_describe(exc)}") from None
    except AttributeError as exc:
        raise AppLoadError(f"cannot load app {spec!r}: {exc}") from None
    except Exception as exc:
        raise AppLoadError(f"cannot load app {spec!r}: {_where(exc)}{_describe(exc)}") from None
    if not isinstance(app, Celery):
        raise AppLoadError(f"cannot load app {spec!r}: it is a {type(app).__name__}, "
                           "not a Celery app")
    load_tasks(app, spec)
    return app


def load_tasks(app: Any, spec: str) -> None:
    """Import the task modules (and their signal receivers) as a worker does."""
    try:
        if os.environ.get("DJANGO_SETTINGS_MODULE"):
            import django

            django.setup()
        app.loader.import_default_modules()
        app.finalize(auto=True)
    except Exception as exc:
        raise AppLoadError(f"cannot load the tasks of {spec!r}: {_where(exc)}{_describe(exc)}"
                           ) from None


def _required_params(task: Any) -> tuple[str, ...]:
    try:
        sig = inspect.signature(task.run)
    except (TypeError, ValueError):
        return ()
    return tuple(
        p.name for p in sig.parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )


def queue_of(app: Any, name: str) -> str | None:
    try:
        options = app.amqp.router.route({}, name, (), {})
    except Exception:
        return None
    queue = options.get("queue")
    name = getattr(queue, "name", queue)
    return str(name) if name is not None else None


def list_tasks(app: Any, globs: tuple[str, ...] = ()) -> list[TaskInfo]:
    """Registered tasks except Celery's built-ins, filtered by ``--task`` globs, sorted."""
    infos = []
    for name, task in sorted(app.tasks.items()):
        if name.startswith("celery."):
            continue
        if globs and not any(fnmatch.fnmatchcase(name, g) for g in globs):
            continue
        infos.append(TaskInfo(name, queue_of(app, name), _required_params(task),
                              getattr(task.run, "__module__", None)))
    return infos


def app_roots(app: Any) -> tuple[str, ...]:
    """Folders holding the app's own code, so frames there count as audited code."""
    roots = set()
    for name in {app.main or "", *(t.__module__ for t in app.tasks.values())}:
        top = sys.modules.get(name.split(".")[0]) if name else None
        path = getattr(top, "__file__", None)
        if path and not name.startswith(("celery", "kombu")):
            roots.add(os.path.dirname(os.path.realpath(path)) + os.sep)
    return tuple(sorted(roots))


def override_django_settings(overrides: dict[str, Any]) -> None:
    """Scenario values for Django settings (a mock's URL, say), set after django.setup()."""
    if not overrides:
        return
    if "django.conf" not in sys.modules:
        raise AppLoadError("the scenario sets [settings] but the app does not use Django")
    from django.conf import settings

    for key, value in overrides.items():
        setattr(settings, key, value)


def _host_port(url: str | None) -> tuple[str, int | None] | None:
    from urllib.parse import urlsplit

    if not url or "://" not in url:
        return None
    try:
        parts = urlsplit(url)
        return (parts.hostname, parts.port) if parts.hostname else None
    except ValueError:
        return None


def configured_endpoints(app: Any) -> list[tuple[str, int | None]]:
    """The broker, result backend and Django databases the app is configured with:
    the egress guard lets the audited code reach them."""
    found = []
    for url in (app.conf.broker_url, app.conf.result_backend):
        endpoint = _host_port(url if isinstance(url, str) else None)
        if endpoint:
            found.append(endpoint)
    if "django.conf" in sys.modules:
        from django.conf import settings

        for db in getattr(settings, "DATABASES", {}).values():
            if db.get("HOST") and not str(db["HOST"]).startswith("/"):
                found.append((str(db["HOST"]), int(db["PORT"]) if db.get("PORT") else None))
    return found
