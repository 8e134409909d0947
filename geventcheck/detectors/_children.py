"""Every process a task starts, named with its command and exit code (``processes``).

The egress guard lives in the audited process. A task that runs a script or a shell
command can reach out from a process the guard never sees, so each process a task
starts is reported: ``subprocess`` (gevent's and the standard library's ``Popen``,
so ``run``, ``check_output`` and ``os.popen`` too), ``os.system``, ``os.spawn*``,
``os.posix_spawn*``, ``os.fork``/``forkpty`` and ``multiprocessing``. Python children
also inherit the guard (see ``child_guard_env``); refusals they record come back here.

Wrappers rather than audit events: gevent's ``Popen`` raises no ``subprocess.Popen``
event and forks in Python, so ``os.exec`` fires in the child, where no one hears it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._model import Finding
from ._bytecode import Site, app_site, shown_path

# Set in the audited process; every Python child that inherits it installs the guard.
GUARD_ENV = "GEVENTCHECK_CHILD_GUARD"
_SITE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "runner", "childguard")
_EGRESS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_egress.py")
_MARK = "__geventcheck_children__"
# Launches in progress in this greenlet (each greenlet has its own context): gevent's
# Popen waits cooperatively while it starts, and another copy may launch meanwhile.
_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("geventcheck_launching",
                                                             default=0)
_UNKNOWN = object()


@dataclass
class Started:
    """One process a task started."""

    command: str
    how: str  # "subprocess", "os.system", "os.spawnv", "multiprocessing", ...
    site: Site | None
    pid: int | None = None
    exit_code: int | object | None = _UNKNOWN  # None: still running when the task ended
    error: str | None = None  # it could not be started
    popen: Any = None  # the Popen or Process, kept until reported, to read its exit code

    def final_exit_code(self) -> int | object | None:
        target = self.popen
        if target is None:
            return self.exit_code
        with contextlib.suppress(Exception):
            code = target.poll() if hasattr(target, "poll") else target.exitcode
            return code if isinstance(code, int) else None
        return self.exit_code


@dataclass
class ChildProcesses:
    """Records what the audited code starts; ``take`` after each task."""

    roots: tuple[str, ...]
    guard_report: str | None = None  # where guarded Python children write their refusals
    started: list[Started] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _report_offset: int = 0

    # -- recording ---------------------------------------------------------------------
    def _record(self, started: Started) -> Started:
        with self._lock:
            self.started.append(started)
        return started

    def _site(self) -> Site | None:
        return app_site(sys._getframe(2), self.roots)

    def _outer(self) -> bool:
        """The first of nested launches (multiprocessing forks through os.fork)."""
        return not _DEPTH.get()

    @contextlib.contextmanager
    def _nested(self) -> Any:
        token = _DEPTH.set(_DEPTH.get() + 1)
        try:
            yield
        finally:
            _DEPTH.reset(token)

    def install(self) -> None:
        """Wrap every way to start a process; idempotent."""
        classes = {subprocess.Popen}
        monkey = sys.modules.get("gevent.monkey")
        if monkey is not None:
            classes.add(monkey.get_original("subprocess", "Popen"))
        for cls in classes:
            self._wrap_popen(cls)
        self._wrap(os, "system", "os.system", lambda a, k: a[0] if a else k.get("command"),
                   status=True)
        for name in ("spawnv", "spawnve", "spawnvp", "spawnvpe"):
            self._wrap(os, name, f"os.{name}", lambda a, k: _argv(a[2]) if len(a) > 2 else "?",
                       spawn=True)
        for name in ("posix_spawn", "posix_spawnp"):
            self._wrap(os, name, f"os.{name}", lambda a, k: _argv(a[1]) if len(a) > 1 else "?",
                       pid=True)
        for name in ("fork", "forkpty"):
            self._wrap(os, name, f"os.{name}", lambda a, k: f"a fork of {_argv(sys.argv)}",
                       pid=True)
        self._wrap_multiprocessing()

    def _wrap(self, owner: Any, name: str, how: str,
              command_of: Callable[[tuple[Any, ...], dict[str, Any]], Any], *,
              status: bool = False, spawn: bool = False, pid: bool = False) -> None:
        func = getattr(owner, name, None)
        if func is None or getattr(func, _MARK, False):
            return
        recorder = self

        @functools.wraps(func)
        def launched(*args: Any, **kwargs: Any) -> Any:
            if not recorder._outer():
                return func(*args, **kwargs)
            site = recorder._site()
            command = _text(command_of(args, kwargs))
            with recorder._nested():
                try:
                    result = func(*args, **kwargs)
                except OSError as exc:
                    recorder._record(Started(command, how, site, error=str(exc)))
                    raise
            if pid and result == 0 and name in ("fork",):
                return result  # the forked child: it reports nothing
            if isinstance(result, tuple):  # forkpty: (pid, fd)
                if result[0] == 0:
                    return result
                recorder._record(Started(command, how, site, pid=result[0]))
            elif status:  # os.system: a wait status
                recorder._record(Started(command, how, site, exit_code=_exit_code(result)))
            elif spawn and args and args[0] == os.P_WAIT:  # already an exit code (-signal)
                recorder._record(Started(command, how, site, exit_code=result))
            else:
                recorder._record(Started(command, how, site,
                                         pid=result if isinstance(result, int) else None))
            return result

        setattr(launched, _MARK, True)
        setattr(owner, name, launched)

    def _wrap_popen(self, cls: type) -> None:
        init = vars(cls).get("__init__")
        if init is None or getattr(init, _MARK, False):
            return
        recorder = self

        @functools.wraps(init)
        def __init__(popen: Any, args: Any, *rest: Any, **kwargs: Any) -> None:
            if not recorder._outer():
                return init(popen, args, *rest, **kwargs)  # type: ignore[no-any-return]
            site = recorder._site()
            command = _text(args)
            with recorder._nested():
                try:
                    init(popen, args, *rest, **kwargs)
                except OSError as exc:
                    recorder._record(Started(command, "subprocess", site, error=str(exc)))
                    raise
            recorder._record(Started(command, "subprocess", site, pid=popen.pid,
                                     popen=popen))
            return None

        setattr(__init__, _MARK, True)
        setattr(cls, "__init__", __init__)  # noqa: B010 - replaced on the class

    def _wrap_multiprocessing(self) -> None:
        import multiprocessing.process as mp_process

        cls = mp_process.BaseProcess
        start = vars(cls).get("start")
        if start is None or getattr(start, _MARK, False):
            return
        recorder = self

        @functools.wraps(start)
        def started(process: Any) -> None:
            if not recorder._outer():
                return start(process)  # type: ignore[no-any-return]
            site = recorder._site()
            target = getattr(process, "_target", None)
            command = (f"multiprocessing {process.name} running "
                       f"{getattr(target, '__qualname__', None) or 'run()'}")
            with recorder._nested():
                start(process)
            recorder._record(Started(command, "multiprocessing", site, pid=process.pid,
                                     popen=process))
            return None

        setattr(started, _MARK, True)
        setattr(cls, "start", started)  # noqa: B010 - replaced on the class, for every process

    # -- reporting ---------------------------------------------------------------------
    def take(self) -> tuple[list[dict[str, Any]], list[Finding]]:
        """What the task started since the last call (one ``_model.Process`` entry per
        command and line), and the refusals its guarded Python children recorded."""
        with self._lock:
            taken, self.started = self.started, []
        groups: dict[tuple[str, Site | None], list[Started]] = {}
        for one in taken:
            groups.setdefault((one.command, one.site), []).append(one)
        processes = [_entry(command, site, runs) for (command, site), runs in groups.items()]
        return processes, self._child_egress({one.pid: one.site for one in taken if one.pid})

    def _child_egress(self, sites: dict[int, Site | None]) -> list[Finding]:
        """Refusals the guarded children wrote, blamed on the task's line that started the
        child when it is a direct child (else on the child's own line)."""
        if not self.guard_report:
            return []
        try:
            with open(self.guard_report, encoding="utf-8") as fh:
                fh.seek(self._report_offset)
                lines = fh.readlines()
                self._report_offset = fh.tell()
        except OSError:
            return []
        findings = []
        for line in lines:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                a = json.loads(line)
                endpoint = a["host"] if a.get("port") is None else f"{a['host']}:{a['port']}"
                inside = f" at {a['file']}:{a['line']}" if a.get("file") else ""
                site = sites.get(a.get("pid"))
                file = shown_path(site.file) if site else (
                    shown_path(a["file"]) if a.get("file") else None)
                findings.append(Finding(
                    "egress", "error",
                    f"a child process ({_shorten(a.get('argv', '?'))}, pid {a.get('pid')}) "
                    f"tried to reach {endpoint} ({a.get('kind')}){inside}, which is neither "
                    "loopback nor a service of the scenario: the guard it inherited refused "
                    "it before anything was sent",
                    file=file, line=site.line if site else a.get("line"),
                    function=site.function if site else a.get("function"), endpoint=endpoint,
                    stack=tuple(a.get("stack", ())), phase="children",
                    fix="fake it in the scenario ([[services.http]] with hosts = [...]), or "
                        "list it under allow = [...] if the audit may really reach it"))
        return findings


def _entry(command: str, site: Site | None, runs: list[Started]) -> dict[str, Any]:
    """A ``_model.Process`` as sent to the parent."""
    codes = [r.final_exit_code() for r in runs]
    return {
        "command": _shorten(command), "how": runs[0].how, "count": len(runs),
        "exit_codes": sorted({c for c in codes if isinstance(c, int)}),
        "running": sum(1 for r, c in zip(runs, codes, strict=True) if c is None and not r.error),
        "not_waited": sum(1 for c in codes if c is _UNKNOWN),
        "errors": sorted({r.error for r in runs if r.error}),
        "file": shown_path(site.file) if site else None,
        "line": site.line if site else None, "function": site.function if site else None,
    }


def _exit_code(status: Any) -> int | None:
    """os.system and os.spawn's P_WAIT results as exit codes (negative: a signal)."""
    if not isinstance(status, int):
        return None
    if status < 0:
        return status
    with contextlib.suppress(ValueError):
        return os.waitstatus_to_exitcode(status)
    return status


def _argv(argv: Any) -> str:
    with contextlib.suppress(TypeError):
        return shlex.join(os.fsdecode(a) for a in argv)
    return repr(argv)


def _text(command: Any) -> str:
    if isinstance(command, str | bytes):
        return os.fsdecode(command)
    if isinstance(command, list | tuple):
        return _argv(command)
    return repr(command) if command is not None else "?"


def _shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def child_guard_env(allowed: list[tuple[str, int | None]], host_map: dict[str, str],
                    port_map: dict[str, int], report: str) -> dict[str, str]:
    """The environment that makes every Python child install the egress guard at start.

    ``PYTHONPATH`` gains a folder holding only a ``sitecustomize`` module, which Python
    imports at start-up; it loads the guard from this very file's neighbour by path (the
    child need not have geventcheck installed) and then runs the ``sitecustomize`` it
    shadows, if there is one.
    """
    config = {"allowed": [list(a) for a in allowed], "host_map": host_map,
              "port_map": port_map, "report": report, "egress": _EGRESS_FILE}
    path = os.environ.get("PYTHONPATH", "")
    parts = [p for p in path.split(os.pathsep) if p and p != _SITE_DIR]
    return {GUARD_ENV: json.dumps(config),
            "PYTHONPATH": os.pathsep.join([_SITE_DIR, *parts])}

