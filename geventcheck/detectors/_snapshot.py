"""Snapshots of the process-wide state a task could change, their differences, and restore.

Under prefork a process runs one task at a time, so the working directory,
``os.environ``, ``sys.stdout``, logging and driver hooks are in effect the task's
own. On a gevent worker they are shared. The probe compares snapshots on every
switch, and the runner puts the state back between tasks, so no task is judged
by what an earlier one left behind.
"""

from __future__ import annotations

import _thread
import contextlib
import locale
import logging
import os
import reprlib
import signal
import socket
import sys
import tempfile
import types
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

# Taken before any wrapper is installed: the snapshot must never see (or record) itself.
_umask = os.umask
_setlocale = locale.setlocale
_setdefaulttimeout = socket.setdefaulttimeout
_signal = signal.signal
_set_level = logging.Logger.setLevel

WATCHED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGALRM")
_STDIO = ("stdin", "stdout", "stderr")
# Snapshot entries that hold one mapping each; the differ reports their keys one by one.
_NESTED = {"env": "env:", "signals": "signal:", "logger levels": "logger level:",
           "logger handlers": "logger handlers:", "logger propagate": "logger propagate:",
           "logger disabled": "logger disabled:"}
_PSYCOPG2_HOOK = "psycopg2 wait callback"
_THREADPOOL = "hub threadpool size"


class _Gone:
    """The working directory was deleted (os.getcwd() fails)."""

    def __repr__(self) -> str:
        return "a deleted directory"


GONE = _Gone()


class Same:
    """Compares by identity: a new sys.stdout equal to the old one is still another stream."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __repr__(self) -> str:
        obj = self.obj
        for name in _STDIO:
            if obj is getattr(sys, f"__{name}__", None):
                return f"the process's {name}"
        return f"a {type(obj).__name__} object"


def _on_main_thread() -> bool:
    """signal.signal only works there; on Linux the main thread's id is the process id."""
    return sys.platform != "linux" or _thread.get_native_id() == os.getpid()


def take() -> dict[str, Any]:
    """The process-wide state a task could change, as comparable values. Never raises."""
    snap: dict[str, Any] = {}
    try:
        snap["cwd"] = os.getcwd()
    except OSError:
        snap["cwd"] = GONE
    snap["env"] = dict(os.environ)
    mask = _umask(0o022)  # there is no getter: set and put back at once
    _umask(mask)
    snap["umask"] = mask
    with contextlib.suppress(locale.Error, ValueError):
        snap["locale"] = _setlocale(locale.LC_ALL, None)  # None: a query, changes nothing
    for name in _STDIO:
        snap[f"sys.{name}"] = Same(getattr(sys, name, None))
    snap["socket timeout"] = socket.getdefaulttimeout()
    if _on_main_thread():
        snap["signals"] = {
            name: signal.getsignal(getattr(signal, name))
            for name in WATCHED_SIGNALS if hasattr(signal, name)
        }
    snap["sys.path"] = tuple(sys.path)
    root = logging.getLogger()
    snap["root level"] = root.level
    snap["root handlers"] = tuple(Same(h) for h in root.handlers)
    snap["root propagate"] = root.propagate
    snap["logging.disable"] = root.manager.disable
    levels: dict[str, int] = {}
    handlers: dict[str, tuple[Same, ...]] = {}
    propagate: dict[str, bool] = {}
    disabled: dict[str, bool] = {}
    with contextlib.suppress(RuntimeError):  # a thread adding a logger meanwhile
        for name, logger in list(logging.Logger.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger):
                levels[name] = logger.level
                handlers[name] = tuple(Same(h) for h in logger.handlers)
                propagate[name] = logger.propagate
                disabled[name] = logger.disabled
    snap["logger levels"] = levels
    snap["logger handlers"] = handlers
    snap["logger propagate"] = propagate
    snap["logger disabled"] = disabled
    snap["tempfile.tempdir"] = _tempdir()
    snap[_PSYCOPG2_HOOK] = Same(_psycopg2_hook())
    snap[_THREADPOOL] = _threadpool_size()
    return snap


def _psycopg2_hook() -> Any:
    """psycopg2's process-wide wait callback (psycogreen installs one); None when unset or
    when psycopg2 is not loaded, which amounts to the same: libpq waits in C."""
    extensions = sys.modules.get("psycopg2.extensions")
    getter = getattr(extensions, "get_wait_callback", None)
    return getter() if getter is not None else None


def _hub() -> Any:
    """This thread's gevent hub if it has one; a snapshot never creates one."""
    hub_local = sys.modules.get("gevent._hub_local")
    get = getattr(hub_local, "get_hub_if_exists", None)
    return get() if get is not None else None


def _threadpool_size() -> int | None:
    """The hub threadpool's maxsize, read without creating the pool (its size to be)."""
    hub = _hub()
    if hub is None:  # the size the hub will give its pool once it exists
        hub_local = sys.modules.get("gevent._hub_local")
        hub_class = hub_local.get_hub_class() if hub_local is not None else None
        size = getattr(hub_class, "threadpool_size", None)
        return int(size) if isinstance(size, int) else None
    pool = getattr(hub, "_threadpool", None)
    return int(pool.maxsize) if pool is not None else int(hub.threadpool_size)


_DEFAULT_TEMPDIR: list[str] = []


def _tempdir() -> str | None:
    """tempfile.tempdir, with None read as the default it stands for: the first
    gettempdir() fills it in, and a task that merely made a temp file changed nothing."""
    current = tempfile.tempdir
    if current is not None:
        return current
    if not _DEFAULT_TEMPDIR:
        try:
            _DEFAULT_TEMPDIR.append(tempfile.gettempdir())
        except OSError:
            return None
        finally:
            tempfile.tempdir = None  # gettempdir caches it: a snapshot must change nothing
    return _DEFAULT_TEMPDIR[0]


@dataclass(frozen=True)
class Change:
    key: str  # "cwd", "env:NAME", "signal:SIGTERM", "logger level:NAME", "sys.stdout", ...
    before: Any
    after: Any

    @property
    def what(self) -> str:
        return what(self.key)

    def describe(self) -> str:
        if self.key == "sys.path":
            return f"sys.path changed ({_path_delta(self.before, self.after)})"
        return (f"{self.what} changed from {describe(self.key, self.before)} "
                f"to {describe(self.key, self.after)}")


def equal(a: Any, b: Any) -> bool:
    try:
        return a is b or bool(a == b)
    except Exception:
        return False


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[Change]:
    """What differs between two snapshots, one change per variable, handler or logger.

    An environment variable that appears or disappears is a change (``None`` stands for
    unset); a logger that exists in only one snapshot is not (new loggers are normal).
    """
    changes: list[Change] = []
    for key in [*before, *(k for k in after if k not in before)]:
        a, b = before.get(key), after.get(key)
        prefix = _NESTED.get(key)
        if prefix is None:
            if key in before and key in after and not equal(a, b):
                changes.append(Change(key, a, b))
            continue
        old: dict[str, Any] = a if isinstance(a, dict) else {}
        new: dict[str, Any] = b if isinstance(b, dict) else {}
        names = (old.keys() | new.keys()) if key == "env" else (old.keys() & new.keys())
        for name in sorted(names):
            if not equal(old.get(name), new.get(name)):
                changes.append(Change(prefix + name, old.get(name), new.get(name)))
    return changes


def restore(changes: Iterable[Change]) -> list[Change]:
    """Put back each change's ``before`` value; returns the ones that could not be."""
    failed = []
    for change in changes:
        try:
            _put(change.key, change.before)
        except (OSError, ValueError, TypeError, AttributeError, locale.Error):
            failed.append(change)
    return failed


def _put(key: str, value: Any) -> None:
    root = logging.getLogger()
    if key == "cwd":
        if isinstance(value, str):
            os.chdir(value)
    elif key.startswith("env:"):
        name = key[4:]
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    elif key == "umask":
        _umask(value)
    elif key == "locale":
        _setlocale(locale.LC_ALL, value)
    elif key in ("sys.stdin", "sys.stdout", "sys.stderr"):
        setattr(sys, key[4:], value.obj)
    elif key == "socket timeout":
        _setdefaulttimeout(value)
    elif key.startswith("signal:"):
        if value is not None and _on_main_thread():  # None: installed outside Python
            _signal(getattr(signal, key[7:]), value)
    elif key == "sys.path":
        sys.path[:] = list(value)
    elif key == "root level":
        _set_level(root, value)
    elif key == "root handlers":
        root.handlers[:] = [h.obj for h in value]
    elif key.startswith("logger level:"):
        logger = logging.Logger.manager.loggerDict.get(key[13:])
        if isinstance(logger, logging.Logger):
            _set_level(logger, value)
    elif key.startswith("logger handlers:"):
        logger = logging.Logger.manager.loggerDict.get(key[16:])
        if isinstance(logger, logging.Logger):
            logger.handlers[:] = [h.obj for h in value]
    elif key.startswith(("logger propagate:", "logger disabled:")):
        attr, name = key[7:].split(":", 1)
        logger = logging.Logger.manager.loggerDict.get(name)
        if isinstance(logger, logging.Logger):
            setattr(logger, attr, value)
    elif key == "root propagate":
        root.propagate = value
    elif key == "logging.disable":
        logging.disable(value)
    elif key == "tempfile.tempdir":
        tempfile.tempdir = value
    elif key == _PSYCOPG2_HOOK:
        extensions = sys.modules.get("psycopg2.extensions")
        if extensions is not None:
            extensions.set_wait_callback(value.obj)
    elif key == _THREADPOOL:
        hub = _hub()
        if hub is not None and value is not None:
            if getattr(hub, "_threadpool", None) is not None:
                hub.threadpool.maxsize = value
            else:
                hub.threadpool_size = value


_SECRET_WORDS = ("TOKEN", "SECRET", "PASSW", "KEY", "CREDENTIAL", "AUTH")


# A nested key's prefix and how to name the thing it stands for.
_WHAT_PREFIXED: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("env:", lambda name: f"os.environ[{name!r}]"),
    ("signal:", lambda name: f"the {name} handler"),
    ("logger level:", lambda name: f"the level of logger {name!r}"),
    ("logger handlers:", lambda name: f"the handlers of logger {name!r}"),
    ("logger propagate:", lambda name: f"logger {name!r}'s propagate"),
    ("logger disabled:", lambda name: f"logger {name!r}'s disabled"),
    ("module attribute:", lambda name: name),
)


def what(key: str) -> str:
    """The thing a snapshot key stands for, as a reader would name it."""
    for prefix, name_it in _WHAT_PREFIXED:
        if key.startswith(prefix):
            return name_it(key[len(prefix):])
    return {
        "cwd": "the working directory",
        "umask": "the umask",
        "locale": "the locale",
        "socket timeout": "socket.getdefaulttimeout()",
        "root level": "the root logger's level",
        "root handlers": "the root logger's handlers",
        "root propagate": "the root logger's propagate",
        "logging.disable": "logging.disable()",
        "random seed": "the global random generator",
        _PSYCOPG2_HOOK: "psycopg2's wait callback (psycopg2.extensions.get_wait_callback())",
        _THREADPOOL: "the gevent hub's threadpool size",
    }.get(key, key)


def describe(key: str, value: Any) -> str:
    """A value for a message: short, and never an environment secret."""
    if key.startswith("env:"):
        return _describe_env(key, value)
    text: str | None = None
    if key == "umask" and isinstance(value, int):
        text = f"{value:04o}"
    elif (key == "root level" or key.startswith("logger level:")) and isinstance(value, int):
        text = logging.getLevelName(value)
    elif key == "root handlers" or key.startswith("logger handlers:"):
        text = "[" + ", ".join(type(h.obj).__name__ for h in value) + "]"
    elif key == "logging.disable" and isinstance(value, int):
        text = logging.getLevelName(value) if value else "NOTSET (nothing disabled)"
    elif key.startswith("module attribute:") and isinstance(value, Same):
        text = "nothing" if value.obj is _MISSING else callable_name(value.obj)
    elif key == _PSYCOPG2_HOOK and isinstance(value, Same):
        text = "None (libpq waits in C, blocking the hub)" if value.obj is None else (
            callable_name(value.obj))
    elif key.startswith("signal:"):
        text = ("a handler installed outside Python" if value is None else
                getattr(value, "name", None) or getattr(value, "__qualname__", None))
    elif key == "socket timeout" and value is None:
        text = "None (no timeout)"
    elif isinstance(value, _Gone):
        text = str(value)
    return text if text is not None else reprlib.repr(value)


def _describe_env(key: str, value: str | None) -> str:
    if value is None:
        return "unset"
    if any(word in key.upper() for word in _SECRET_WORDS):
        return f"a {len(value)}-character secret"
    return reprlib.repr(value)


def _path_delta(before: tuple[str, ...], after: tuple[str, ...]) -> str:
    added = [p for p in after if p not in before]
    removed = [p for p in before if p not in after]
    parts = [f"added {reprlib.repr(p)}" for p in added] + [
        f"removed {reprlib.repr(p)}" for p in removed]
    return ", ".join(parts) or "reordered"


FIXES = {
    "cwd": "pass cwd= to subprocess and use absolute paths (os.path.join(base, name)) "
           "instead of os.chdir",
    "env": "pass env={**os.environ, ...} to subprocess, or pass the value as an argument, "
           "instead of changing os.environ",
    "stdio": "contextlib.redirect_stdout swaps the process-wide sys.stdout: write to a "
             "StringIO you pass around (print(..., file=buf)), or use logging",
    "umask": "pass mode= to os.open / os.makedirs, or os.chmod the file, instead of "
             "changing the umask",
    "locale": "format with explicit, locale-independent code (or babel) instead of "
              "locale.setlocale",
    "socket timeout": "give each client or socket its own timeout (timeout=, "
                      "sock.settimeout) instead of socket.setdefaulttimeout",
    "signal": "install signal handlers once at worker start, never in a task; use "
              "gevent.Timeout for a time limit instead of SIGALRM",
    "sys.path": "set sys.path up once at start (or install the package) instead of "
                "changing it in a task",
    "logging": "configure logging once at worker start; in a task use a LoggerAdapter or a "
               "filter instead of changing levels or handlers",
    "tempfile.tempdir": "pass dir= to the tempfile functions instead of setting "
                        "tempfile.tempdir",
    "random seed": "use a random.Random(seed) of your own instead of seeding the global "
                   "generator",
    "driver hook": "install driver hooks such as psycogreen.gevent.patch_psycopg() once at "
                   "worker start (at import, after patching, or in worker_init), never in a "
                   "task: a task that sets it changes every task after it, and is judged by "
                   "it only when it happens to run first",
    "threadpool": "size the hub's threadpool once at worker start (gevent.get_hub()."
                  "threadpool.maxsize), never in a task",
    "module attribute": "patch modules once at worker start (or in tests, with a context "
                        "manager that puts the original back), never in a task",
}


_FAMILIES = (("env:", "env"), ("sys.std", "stdio"), ("signal:", "signal"),
             ("logger ", "logging"), ("root ", "logging"), ("logging.", "logging"),
             (_PSYCOPG2_HOOK, "driver hook"), (_THREADPOOL, "threadpool"),
             ("module attribute:", "module attribute"))


def family(key: str) -> str:
    """The group of a key whose fix text applies (FIXES)."""
    return next((name for prefix, name in _FAMILIES if key.startswith(prefix)), key)


def callable_name(obj: Any) -> str:
    """``module.qualname`` of a function or class, read without calling into it."""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    module = getattr(obj, "__module__", None)
    if isinstance(name, str):
        return f"{module}.{name}" if isinstance(module, str) else name
    return f"a {type(obj).__name__} object"


# ---------------------------------------------------------------------------
# Attributes patched onto imported modules: too many to compare on every switch,
# so the runner compares them once per task.
# ---------------------------------------------------------------------------

ModuleSnapshot = dict[str, tuple[Any, dict[str, Any]]]


def take_modules(skip: Callable[[str, Any], bool]) -> ModuleSnapshot:
    """The functions and classes every loaded module holds, by identity.

    ``skip(name, module)`` leaves out modules whose attributes change by design (the
    app's own, whose globals the bytecode analysis judges; geventcheck's; gevent's).
    """
    snap: ModuleSnapshot = {}
    for name, module in list(sys.modules.items()):
        if not issubclass(type(module), types.ModuleType):  # type(): never a lazy __class__
            continue
        try:
            if skip(name, module):
                continue
            attrs = {k: v for k, v in list(vars(module).items())
                     if callable(v) and not issubclass(type(v), types.ModuleType)}
        except Exception:  # an odd module: not one to watch
            continue
        snap[name] = (module, attrs)
    return snap


def module_changes(before: ModuleSnapshot, known: Collection[str],
                   is_app_code: Callable[[Any], bool]) -> list[Change]:
    """Functions and classes replaced on (or app code added to) a module since ``before``.

    A value added by a library is a lazy import filling itself in, and one that comes
    from a module imported since ``before`` (not in ``known``) is that module's import-time patch
    (typing_extensions patches typing): neither is a change, and both become part of
    ``before``. A value from the app's own code, or from a library loaded before, is.
    """
    changes: list[Change] = []
    for name, (module, attrs) in before.items():
        try:
            now = vars(module)
            for attr, old in list(attrs.items()):
                new = now.get(attr, _MISSING)
                if new is old:
                    continue
                if new is not _MISSING and not is_app_code(new) and _home(new) not in known:
                    attrs[attr] = new  # imported since: the new normal
                    continue
                changes.append(Change(f"module attribute:{name}.{attr}", Same(old), Same(new)))
            for attr, new in list(now.items()):
                if attr not in attrs and callable(new) and is_app_code(new):
                    changes.append(Change(f"module attribute:{name}.{attr}", Same(_MISSING),
                                          Same(new)))
        except Exception:
            continue
    return changes


def restore_modules(before: ModuleSnapshot, changes: Iterable[Change]) -> None:
    """Put each patched module attribute back (or remove it when the task added it)."""
    for change in changes:
        dotted = change.key.split(":", 1)[1]
        module_name, _, attr = dotted.rpartition(".")
        entry = before.get(module_name)
        if entry is None:
            continue
        with contextlib.suppress(Exception):
            if change.before.obj is _MISSING:
                delattr(entry[0], attr)
            else:
                setattr(entry[0], attr, change.before.obj)


def _home(value: Any) -> str | None:
    """The module a function or class was defined in, read without evaluating a proxy."""
    cls = type(value)
    if issubclass(cls, type):
        home = vars(value).get("__module__")
    elif cls in (types.FunctionType, types.BuiltinFunctionType):
        home = value.__module__
    else:
        home = _static_module(cls)
    return home if isinstance(home, str) else None


def _static_module(cls: type) -> Any:
    return vars(cls).get("__module__")


class _Missing:
    def __repr__(self) -> str:
        return "nothing"


_MISSING = _Missing()

