"""Process-wide state a task changes and holds while other tasks run (``global-state``).

Under prefork a process runs one task at a time, so the working directory,
``os.environ``, ``sys.stdout``, logging levels and module globals are in effect
the task's own. On a gevent worker the tasks running at once share them: a
change still in place when the task waits leaks into every other task, and a
module global read before a wait and written after it loses the other copies'
updates.

During the probe run this probe compares the process state with a baseline on
every switch out of a task copy (a greenlet trace function chained to the hub
monitor's). An audit hook and a few temporary wrappers record the line that made
each change. The module globals that the task's own code writes are found in its
bytecode (the task function and the app functions it calls, two levels deep), and
each copy is watched while it is switched out between a read and a write of one.
Everything changed is put back in ``end`` so the next task starts clean.
"""

from __future__ import annotations

import _thread
import builtins
import collections
import contextlib
import dataclasses
import dis
import inspect
import locale
import logging
import os
import random
import reprlib
import signal
import socket
import sys
import tempfile
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import greenlet

from .._model import Finding
from .._paths import is_audited_file, relative
from ._probe import ProbeRun

KIND = "global-state"

# ---------------------------------------------------------------------------
# Snapshots of the process-wide state
# ---------------------------------------------------------------------------

# Taken before any wrapper is installed: the snapshot must never see (or record) itself.
_umask = os.umask
_setlocale = locale.setlocale
_setdefaulttimeout = socket.setdefaulttimeout
_signal = signal.signal
_set_level = logging.Logger.setLevel

WATCHED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGALRM")
_STDIO = ("stdin", "stdout", "stderr")
# Snapshot entries that hold one mapping each; the differ reports their keys one by one.
_NESTED = {"env": "env:", "signals": "signal:", "logger levels": "logger level:"}


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
    levels: dict[str, int] = {}
    with contextlib.suppress(RuntimeError):  # a thread adding a logger meanwhile
        for name, logger in list(logging.Logger.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger):
                levels[name] = logger.level
    snap["logger levels"] = levels
    snap["tempfile.tempdir"] = _tempdir()
    return snap


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


def _equal(a: Any, b: Any) -> bool:
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
            if key in before and key in after and not _equal(a, b):
                changes.append(Change(key, a, b))
            continue
        old: dict[str, Any] = a if isinstance(a, dict) else {}
        new: dict[str, Any] = b if isinstance(b, dict) else {}
        names = (old.keys() | new.keys()) if key == "env" else (old.keys() & new.keys())
        for name in sorted(names):
            if not _equal(old.get(name), new.get(name)):
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
    elif key == "tempfile.tempdir":
        tempfile.tempdir = value


_SECRET_WORDS = ("TOKEN", "SECRET", "PASSW", "KEY", "CREDENTIAL", "AUTH")


def what(key: str) -> str:
    """The thing a snapshot key stands for, as a reader would name it."""
    if key.startswith("env:"):
        return f"os.environ[{key[4:]!r}]"
    if key.startswith("signal:"):
        return f"the {key[7:]} handler"
    if key.startswith("logger level:"):
        return f"the level of logger {key[13:]!r}"
    return {
        "cwd": "the working directory",
        "umask": "the umask",
        "locale": "the locale",
        "socket timeout": "socket.getdefaulttimeout()",
        "root level": "the root logger's level",
        "root handlers": "the root logger's handlers",
        "random seed": "the global random generator",
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
    elif key == "root handlers":
        text = "[" + ", ".join(type(h.obj).__name__ for h in value) + "]"
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


_FIXES = {
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
}


def _family(key: str) -> str:
    if key.startswith("env:"):
        return "env"
    if key.startswith("sys.std"):
        return "stdio"
    if key.startswith("signal:"):
        return "signal"
    if key.startswith(("logger level:", "root ")):
        return "logging"
    return key


# ---------------------------------------------------------------------------
# Where things happened
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """A line of the app's own code. ``file`` is kept absolute until the report is made:
    the working directory may be anywhere while the task runs."""

    file: str
    line: int
    function: str

    def __str__(self) -> str:
        return f"{_relative(self.file)}:{self.line}"


def _relative(path: str) -> str:
    try:
        return relative(path)
    except OSError:  # no working directory left to be relative to
        return path


def app_site(frame: types.FrameType | None, roots: tuple[str, ...]) -> Site | None:
    """The innermost frame of the app's own code, from ``frame`` outwards."""
    while frame is not None:
        code = frame.f_code
        if is_audited_file(code.co_filename, roots):
            return Site(code.co_filename, frame.f_lineno or code.co_firstlineno, code.co_name)
        frame = frame.f_back
    return None


# ---------------------------------------------------------------------------
# The audit hook: one per process, it cannot be removed, so it consults _RECORDER
# ---------------------------------------------------------------------------

_AUDIT_EVENTS = frozenset({"os.chdir", "os.putenv", "os.unsetenv"})
_RECORDER: Probe | None = None
_HOOK_INSTALLED = False


def _audit_hook(event: str, args: tuple[Any, ...]) -> None:
    if event not in _AUDIT_EVENTS:
        return
    recorder = _RECORDER
    if recorder is None:
        return
    try:
        key = "cwd" if event == "os.chdir" else "env:" + os.fsdecode(args[0])
        recorder.note(key, sys._getframe(1))
    except Exception:  # an audit hook that raises aborts the audited call
        return


def _install_audit_hook() -> None:
    global _HOOK_INSTALLED
    if not _HOOK_INSTALLED:
        sys.addaudithook(_audit_hook)
        _HOOK_INSTALLED = True


# ---------------------------------------------------------------------------
# Module globals the task's code writes, found in its bytecode
# ---------------------------------------------------------------------------

_MUTATORS = frozenset({
    "append", "appendleft", "extend", "extendleft", "insert", "pop", "popleft", "popitem",
    "remove", "clear", "update", "setdefault", "add", "discard", "sort", "reverse", "rotate",
    "move_to_end", "difference_update", "intersection_update",
    "symmetric_difference_update", "__setitem__", "__delitem__", "__iadd__",
})
_STATE_TYPES = (list, dict, set, bytearray, collections.deque, types.SimpleNamespace)
_NOT_STATE = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType,
              types.MethodType)
_NOP = frozenset({"NOP", "RESUME", "EXTENDED_ARG", "KW_NAMES", "PRECALL", "CACHE",
                  "COPY_FREE_VARS", "MAKE_CELL", "RETURN_GENERATOR", "NOT_TAKEN"})
_STOPS = frozenset({"RETURN_VALUE", "RETURN_CONST", "RAISE_VARARGS", "RERAISE"})
_ALWAYS_JUMPS = frozenset({"JUMP_FORWARD", "JUMP_BACKWARD", "JUMP_BACKWARD_NO_INTERRUPT",
                           "JUMP_ABSOLUTE", "JUMP", "JUMP_NO_INTERRUPT"})
_POPS_ONLY = frozenset({
    "POP_TOP", "STORE_FAST", "STORE_NAME", "STORE_DEREF", "STORE_GLOBAL", "STORE_ATTR",
    "STORE_SUBSCR", "DELETE_SUBSCR", "DELETE_ATTR", "LIST_APPEND", "SET_ADD", "MAP_ADD",
    "POP_EXCEPT", "RETURN_VALUE", "END_FOR", "STORE_FAST_STORE_FAST", "POP_BLOCK",
    "DICT_UPDATE", "DICT_MERGE", "LIST_EXTEND", "SET_UPDATE",
})
_JUMP_OPS = frozenset(dis.hasjrel) | frozenset(dis.hasjabs)


class Global:
    """A module-level name: compared by namespace identity and name."""

    __slots__ = ("name", "ns")

    def __init__(self, ns: dict[str, Any], name: str) -> None:
        self.ns = ns
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Global) and other.ns is self.ns and other.name == self.name

    def __hash__(self) -> int:
        return hash((id(self.ns), self.name))

    @property
    def label(self) -> str:
        return f"{self.ns.get('__name__', '?')}.{self.name}"

    def value(self) -> Any:
        return self.ns.get(self.name)


@dataclass(frozen=True)
class _Tag:
    """What a stack slot holds, as far as this analysis cares."""

    kind: str  # "state", "module", "lock", "func", "builtin", "mutator", "other"
    glob: Global | None = None
    detail: str = ""
    callee: Any = None  # the app function a "func" slot refers to
    origin: int = -1  # offset of the load that put the global on the stack


@dataclass(frozen=True)
class Access:
    offset: int
    line: int
    kind: str  # "read", "write", "call"
    glob: Global | None = None
    how: str = ""
    source: int = -1  # for a write through a container: the load of that container


@dataclass(frozen=True)
class GlobalWrite:
    """A module global the task's code writes, with the read that makes it a race if any."""

    glob: Global
    code: types.CodeType
    write: Access
    pattern: str | None = None  # "read-then-write", "write-then-read"
    read: Access | None = None
    call_line: int | None = None

    @property
    def window(self) -> tuple[int, int]:
        """Bytecode offsets a copy is between when it is switched out mid-pattern."""
        if self.read is None:
            return (0, -1)
        first, second = sorted((self.read.offset, self.write.offset))
        return first, second

    def site(self, access: Access) -> Site:
        return Site(self.code.co_filename, access.line, self.code.co_name)


# Everything below looks at a global's value through its type only (the class dicts,
# type(value)): a lazy object (Django's settings, SimpleLazyObject) must not be evaluated,
# and no __getattr__ of the app's may run, just because the probe read the bytecode.


def _static(cls: type, attr: str) -> Any:
    """``attr`` as the instances of ``cls`` get it, read from the class dicts only."""
    return next((vars(c)[attr] for c in cls.__mro__ if attr in vars(c)), None)


def _has(cls: type, attr: str) -> bool:
    return _static(cls, attr) is not None


def _is_lock(cls: type) -> bool:
    return _has(cls, "acquire") and _has(cls, "release")


def _is_state(value: Any, roots: tuple[str, ...]) -> bool:
    """Mutable data: builtin containers and plain instances of the app's own classes."""
    cls = type(value)
    if value is None or issubclass(cls, _NOT_STATE) or _has(cls, "__call__"):
        return False
    if any(c.__name__ in ("local", "_local") for c in cls.__mro__):
        return False  # per greenlet once patched: the thread-local detector judges those
    if issubclass(cls, _STATE_TYPES):
        return True
    if _is_lock(cls):
        return False
    path = getattr(sys.modules.get(cls.__module__), "__file__", None)
    return bool(path) and is_audited_file(str(path), roots)


def _app_function(value: Any, roots: tuple[str, ...]) -> Any:
    """The app function a name refers to (a Celery task's run function too), or None."""
    candidates = [value]
    if not issubclass(type(value), type) and _has(type(value), "delay"):  # a Celery task
        candidates.append(_static(type(value), "run"))
    for candidate in candidates:
        func = candidate.__func__ if type(candidate) in (staticmethod, classmethod) else candidate
        if type(func) is types.FunctionType and is_audited_file(
                func.__code__.co_filename, roots):
            return func
    return None


def _classify(ns: dict[str, Any], name: str, value: Any, found: bool,
              roots: tuple[str, ...]) -> _Tag:
    glob = Global(ns, name)
    if not found:
        return _Tag("other", glob)
    try:
        if issubclass(type(value), types.ModuleType):
            path = vars(value).get("__file__")
            audited = isinstance(path, str) and is_audited_file(path, roots)
            return _Tag("module" if audited else "other", glob)
        func = _app_function(value, roots)
        if func is not None:
            return _Tag("func", glob, callee=func)
        if _is_state(value, roots):
            return _Tag("state", glob)
        if not issubclass(type(value), type) and _is_lock(type(value)):
            return _Tag("lock", glob)
    except Exception:  # an odd object: not one this analysis follows
        pass
    return _Tag("other", glob)


def _lookup(ns: dict[str, Any], name: str) -> tuple[Any, bool, bool]:
    """(value, found, is a builtin) for a LOAD_GLOBAL of ``name`` in module ``ns``."""
    if name in ns:
        return ns[name], True, False
    table = ns.get("__builtins__", builtins)
    table = table if isinstance(table, dict) else vars(table)
    return table.get(name), name in table, name in table


def _line_table(code: types.CodeType) -> dict[int, int]:
    lines: dict[int, int] = {}
    last = code.co_firstlineno
    for start, end, line in code.co_lines():
        for offset in range(start, end, 2):
            lines[offset] = line if line is not None else last
        last = line if line is not None else last
    return lines


@dataclass
class _Scan:
    accesses: dict[int, Access] = field(default_factory=dict)
    guarded: list[tuple[int, int]] = field(default_factory=list)
    callees: list[Any] = field(default_factory=list)

    def is_guarded(self, offset: int) -> bool:
        return any(lo <= offset < hi for lo, hi in self.guarded)


def _top(stack: list[_Tag | None], n: int = 1) -> _Tag | None:
    return stack[-n] if len(stack) >= n else None


def _pop_push(stack: list[_Tag | None], pops: int, pushes: int, tag: _Tag | None = None) -> None:
    del stack[len(stack) - min(pops, len(stack)):]
    stack.extend([None] * pushes)
    if pushes and tag is not None:
        stack[-1] = tag


def _merge(a: tuple[_Tag | None, ...], b: tuple[_Tag | None, ...]) -> tuple[_Tag | None, ...]:
    if len(a) != len(b):
        return a
    return tuple(x if x == y else None for x, y in zip(a, b, strict=True))


def scan(code: types.CodeType, ns: dict[str, Any], roots: tuple[str, ...]) -> _Scan:
    """Reads, writes and calls of module globals in one code object.

    A small abstract interpretation: it follows the value stack along every branch
    (and into exception handlers), so ``CACHE[k] = v`` and ``ITEMS.append(x)`` are
    attributed to the global that was loaded, however the key or argument was built.
    """
    out = _Scan()
    instructions = list(dis.get_instructions(code))
    index = {ins.offset: i for i, ins in enumerate(instructions)}
    lines = _line_table(code)
    entries = list(getattr(dis.Bytecode(code), "exception_entries", ()))
    states: dict[int, tuple[_Tag | None, ...]] = {}
    work: list[tuple[int, tuple[_Tag | None, ...]]] = [(instructions[0].offset, ())]
    for entry in entries:
        depth = entry.depth + (1 if entry.lasti else 0) + 1
        work.append((entry.target, (None,) * depth))

    def record(ins: dis.Instruction, kind: str, glob: Global | None = None,
               how: str = "", source: int = -1) -> None:
        out.accesses.setdefault(ins.offset, Access(
            ins.offset, lines.get(ins.offset, code.co_firstlineno), kind, glob, how, source))

    def tag_of(ns_: dict[str, Any], name: str, value: Any, found: bool,
               ins: dis.Instruction) -> _Tag:
        tag = dataclasses.replace(_classify(ns_, name, value, found, roots), origin=ins.offset)
        if tag.callee is not None and tag.callee not in out.callees:
            out.callees.append(tag.callee)
        return tag

    while work:
        offset, stack_in = work.pop()
        stack = list(stack_in)
        i = index.get(offset)
        while i is not None and i < len(instructions):
            ins = instructions[i]
            seen = states.get(ins.offset)
            if seen is not None:
                merged = _merge(seen, tuple(stack))
                if merged == seen:
                    break
                stack = list(merged)
            states[ins.offset] = tuple(stack)
            name = ins.opname
            arg = ins.arg if ins.opcode >= dis.HAVE_ARGUMENT else None

            jump_stack: list[_Tag | None] | None = None
            if name in ("LOAD_GLOBAL", "LOAD_NAME"):
                value, found, builtin = _lookup(ns, str(ins.argval))
                if builtin:
                    tag: _Tag | None = _Tag("builtin")
                else:
                    tag = tag_of(ns, str(ins.argval), value, found, ins)
                    record(ins, "read", Global(ns, str(ins.argval)))
                _pop_push(stack, 0, dis.stack_effect(ins.opcode, arg), tag)
            elif name in ("LOAD_ATTR", "LOAD_METHOD"):
                obj, attr = _top(stack), str(ins.argval)
                result: _Tag | None = None
                if obj is not None and obj.kind == "module" and obj.glob is not None:
                    module = obj.glob.value()
                    mod_ns = vars(module) if isinstance(module, types.ModuleType) else {}
                    result = tag_of(mod_ns, attr, mod_ns.get(attr), attr in mod_ns, ins)
                    record(ins, "read", Global(mod_ns, attr))
                elif obj is not None and obj.kind == "state":
                    kind = "mutator" if attr in _MUTATORS else "state"
                    result = _Tag(kind, obj.glob, f".{attr}()" if kind == "mutator" else "",
                                  origin=obj.origin)
                pushes = dis.stack_effect(ins.opcode, arg) + 1
                _pop_push(stack, 1, pushes, result)
                if pushes == 2 and result is not None and result.kind == "mutator":
                    stack[-2] = result
            elif name in ("STORE_GLOBAL", "DELETE_GLOBAL"):
                record(ins, "write", Global(ns, str(ins.argval)),
                       "=" if name == "STORE_GLOBAL" else "del")
                _pop_push(stack, 1 if name == "STORE_GLOBAL" else 0, 0)
            elif name in ("STORE_SUBSCR", "DELETE_SUBSCR"):
                container = _top(stack, 2)
                if container is not None and container.kind == "state":
                    record(ins, "write", container.glob,
                           "[...] =" if name == "STORE_SUBSCR" else "del [...]", container.origin)
                _pop_push(stack, 3 if name == "STORE_SUBSCR" else 2, 0)
            elif name in ("STORE_ATTR", "DELETE_ATTR"):
                obj = _top(stack)
                if obj is not None and obj.glob is not None and obj.kind in ("state", "module"):
                    glob = obj.glob
                    if obj.kind == "module":
                        module = glob.value()
                        glob = Global(vars(module), str(ins.argval))
                    record(ins, "write", glob, f".{ins.argval} =" if obj.kind == "state" else "=",
                           obj.origin)
                _pop_push(stack, 2 if name == "STORE_ATTR" else 1, 0)
            elif name == "CALL":
                n = int(arg or 0)
                slots = [t for t in (_top(stack, n + 1), _top(stack, n + 2)) if t is not None]
                mutator = next((t for t in slots if t.kind == "mutator"), None)
                if mutator is not None:
                    record(ins, "write", mutator.glob, mutator.detail, mutator.origin)
                elif not any(t.kind == "builtin" for t in slots):
                    record(ins, "call")
                _pop_push(stack, n + 2, 1)
            elif name == "CALL_FUNCTION_EX":
                record(ins, "call")
                _pop_push(stack, -dis.stack_effect(ins.opcode, arg) + 1, 1)
            elif name == "COPY":
                stack.append(_top(stack, int(arg or 1)))
            elif name == "SWAP":
                n = int(arg or 2)
                if len(stack) >= n:
                    stack[-1], stack[-n] = stack[-n], stack[-1]
            elif name == "BEFORE_WITH":
                manager = _top(stack)
                if manager is not None and manager.kind == "lock" and i + 1 < len(instructions):
                    body = instructions[i + 1].offset
                    targets = {e.target for e in entries if e.start <= body < e.end}
                    out.guarded += [(e.start, e.end) for e in entries if e.target in targets]
                _pop_push(stack, 1, 2)
            elif name in ("UNPACK_SEQUENCE", "UNPACK_EX"):
                _pop_push(stack, 1, dis.stack_effect(ins.opcode, arg) + 1)
            elif name in _NOP or name in _STOPS:
                pass
            else:
                effect = dis.stack_effect(ins.opcode, arg, jump=False)
                if effect > 0:
                    _pop_push(stack, 0, effect)
                elif name in _POPS_ONLY or name.startswith(("POP_JUMP", "JUMP_IF")):
                    _pop_push(stack, -effect, 0)
                else:
                    _pop_push(stack, 1 - effect, 1)
            if ins.opcode in _JUMP_OPS and isinstance(ins.argval, int):
                if name in _ALWAYS_JUMPS:
                    jump_stack = list(stack)
                else:
                    after = dis.stack_effect(ins.opcode, arg, jump=False)
                    taken = dis.stack_effect(ins.opcode, arg, jump=True)
                    jump_stack = list(stack)
                    if taken < after:
                        del jump_stack[len(jump_stack) - min(after - taken, len(jump_stack)):]
                    elif taken > after:
                        jump_stack += [None] * (taken - after)
                work.append((ins.argval, tuple(jump_stack)))
            if name in _STOPS or name in _ALWAYS_JUMPS:
                break
            i += 1
    return out


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    """A code object and the ones nested in it (comprehensions, inner functions)."""
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def task_function(task: Any) -> Any:
    """The plain function behind a Celery task (``run``), or None."""
    run = getattr(task, "run", None)
    run = getattr(run, "__func__", run)
    with contextlib.suppress(ValueError):
        run = inspect.unwrap(run) if run is not None else None
    return run if isinstance(run, types.FunctionType) else None


def global_writes(func: Any, roots: tuple[str, ...], depth: int = 2) -> list[GlobalWrite]:
    """Module globals written by ``func`` and the app functions it calls, ``depth`` deep.

    A write is paired with a read of the same global when a call (which may switch to
    another greenlet) lies between them: read, call, write is a lost update waiting to
    happen; write, call, read may read another task's value. Accesses inside a
    ``with LOCK:`` block on a module-level lock are guarded and left out.
    """
    found: list[GlobalWrite] = []
    seen: set[types.CodeType] = set()
    level = [func] if isinstance(func, types.FunctionType) else []
    for _ in range(depth + 1):
        following: list[Any] = []
        for function in level:
            for code in _codes(function.__code__):
                if code in seen or not is_audited_file(code.co_filename, roots):
                    continue
                seen.add(code)
                try:
                    result = scan(code, function.__globals__, roots)
                except (ValueError, TypeError, KeyError, IndexError):
                    continue  # bytecode this analysis does not know: skip that function
                found += _pair(code, result)
                following += [c for c in result.callees if c.__code__ not in seen]
        level = following
    return found


def _pair(code: types.CodeType, result: _Scan) -> list[GlobalWrite]:
    accesses = sorted((a for a in result.accesses.values() if not result.is_guarded(a.offset)),
                      key=lambda a: a.offset)
    calls = [a for a in accesses if a.kind == "call"]
    writes: dict[Global, list[Access]] = {}
    for access in accesses:
        if access.kind == "write" and access.glob is not None:
            writes.setdefault(access.glob, []).append(access)
    found = []
    for glob, its_writes in writes.items():
        all_reads = [a for a in accesses if a.kind == "read" and a.glob == glob]

        def call_between(lo: int, hi: int) -> Access | None:
            return next((c for c in calls if lo < c.offset < hi), None)

        best: GlobalWrite | None = None
        for write in its_writes:  # read, a call, then the write: the lost update
            # the load of the container a write goes through is part of that write
            reads = [r for r in all_reads if r.offset != write.source]
            before = [r for r in reads if r.offset < write.offset
                      and call_between(r.offset, write.offset)]
            if before:
                read = before[-1]
                call = call_between(read.offset, write.offset)
                best = GlobalWrite(glob, code, write, "read-then-write", read,
                                   call.line if call else None)
                break
        if best is None:
            for write in its_writes:  # the write, a call, then reading it back
                after = [r for r in all_reads if r.offset > write.offset
                         and call_between(write.offset, r.offset)]
                if after:
                    call = call_between(write.offset, after[0].offset)
                    best = GlobalWrite(glob, code, write, "write-then-read", after[0],
                                       call.line if call else None)
                    break
        found.append(best or GlobalWrite(glob, code, its_writes[0]))
    return found


def fingerprint(value: Any) -> Any:
    """Something to compare a global's value with later: a shallow copy of small
    containers (they are mutated in place), the value itself for immutable ones."""
    cls = type(value)
    if value is None or issubclass(cls, bool | int | float | complex | str | bytes | tuple |
                                   frozenset):
        return ("value", value)
    try:
        if issubclass(cls, dict) and len(value) <= 256:
            return ("dict", id(value), dict(value))
        if issubclass(cls, list | collections.deque) and len(value) <= 256:
            return ("list", id(value), list(value))
        if issubclass(cls, set) and len(value) <= 256:
            return ("set", id(value), set(value))
        attrs = object.__getattribute__(value, "__dict__")  # never a lazy object's __getattr__
        if type(attrs) is dict and len(attrs) <= 256:
            return ("object", id(value), dict(attrs))
    except Exception:
        pass
    return ("identity", id(value))


def _show(value: Any) -> str:
    return reprlib.repr(value)


# ---------------------------------------------------------------------------
# The probe
# ---------------------------------------------------------------------------


@dataclass
class _Held:
    change: Change
    switch: Site | None
    made: Site | None


@dataclass
class _Confirmed:
    before: Any
    after: Any
    switch: Site | None


_INHERITED = object()  # the wrapped attribute came from a base class


class Probe:
    """Watches one task's probe run for process state and module globals it shares."""

    kinds: tuple[str, ...] = (KIND,)

    def __init__(self) -> None:
        # Created once per audited process, before any task ran: the state to go back to.
        self._clean = take()
        self._baseline = self._clean
        self._run: ProbeRun | None = None
        self._active = False
        self._rebased = False
        self._leftover: list[Change] = []
        self._trace_fn: Callable[[str, Any], None] = self._trace
        self._previous_trace: Any = None
        self._installed = False  # our trace is in the chain (maybe under a later probe's)
        self._patches: list[tuple[Any, str, Any, Any]] = []
        self._reset()
        _install_audit_hook()

    def _reset(self) -> None:
        self._held: dict[str, _Held] = {}
        # the last line that changed each key, per greenlet, and by anyone (under None)
        self._sites: dict[str, dict[Any, Site]] = {}
        self._seeds: dict[Any, Site | None] = {}
        self._seed_held: dict[Any, tuple[Site | None, Site | None]] = {}
        self._writes: list[GlobalWrite] = []
        self._initial: dict[Global, Any] = {}
        self._pending: dict[Any, list[tuple[GlobalWrite, Any, Site | None]]] = {}
        self._confirmed: dict[int, _Confirmed] = {}

    # -- recording ---------------------------------------------------------------
    def note(self, key: str, frame: types.FrameType | None) -> None:
        """A call that changes ``key`` was made at ``frame``; keep the app line."""
        run = self._run
        if run is None or not self._active:
            return
        site = app_site(frame, run.roots)
        if site is None:
            return
        glet = greenlet.getcurrent()
        sites = self._sites.setdefault(key, {})
        sites[glet] = sites[None] = site
        if key == "random seed" and run.is_task_greenlet(glet):
            self._seeds.setdefault(glet, site)

    def _site_of(self, key: str, glet: Any) -> Site | None:
        sites = self._sites.get(key, {})
        return sites.get(glet) or sites.get(None)

    def _wrap(self, owner: Any, attr: str, key_of: Callable[..., str | None]) -> None:
        """Record the caller's line of ``owner.attr`` while the probe is on."""
        original = getattr(owner, attr, None)
        if original is None:
            return
        own = not isinstance(owner, type) or attr in vars(owner)
        note = self.note

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with contextlib.suppress(Exception):
                key = key_of(*args, **kwargs)
                if key is not None:
                    note(key, sys._getframe(1))
            return original(*args, **kwargs)

        setattr(owner, attr, wrapper)
        self._patches.append((owner, attr, original if own else _INHERITED, wrapper))

    def _install_wrappers(self) -> None:
        signals = {getattr(signal, n): n for n in WATCHED_SIGNALS if hasattr(signal, n)}
        self._wrap(random, "seed", lambda *a, **k: "random seed")
        self._wrap(os, "umask", lambda *a, **k: "umask")
        self._wrap(locale, "setlocale", lambda *a, **k: "locale"
                   if (a[1:] and a[1] is not None) or k.get("locale") is not None else None)
        self._wrap(socket, "setdefaulttimeout", lambda *a, **k: "socket timeout")
        self._wrap(signal, "signal", lambda sig, *a, **k: f"signal:{signals[sig]}"
                   if sig in signals else None)
        self._wrap(logging.Logger, "setLevel", lambda logger, *a, **k: "root level"
                   if logger is logging.getLogger() else f"logger level:{logger.name}")
        redirect = getattr(contextlib, "_RedirectStream", None)  # redirect_stdout/stderr
        if redirect is not None:
            self._wrap(redirect, "__enter__", lambda stream, *a, **k: f"sys.{stream._stream}")

    def _remove_wrappers(self) -> None:
        for owner, attr, original, wrapper in reversed(self._patches):
            if getattr(owner, attr, None) is not wrapper:
                continue  # wrapped again by someone else since: theirs to undo
            if original is _INHERITED:
                delattr(owner, attr)
            else:
                setattr(owner, attr, original)
        self._patches = []

    # -- the greenlet trace ------------------------------------------------------
    def _trace(self, event: str, args: Any) -> None:
        previous = self._previous_trace
        if previous is not None:
            previous(event, args)
        if not self._active:
            if self._installed and greenlet.gettrace() is self._trace_fn:
                # left as a pass-through under another probe's trace, now back on top
                greenlet.settrace(previous)
                self._previous_trace, self._installed = None, False
            return
        run = self._run
        if run is None or event not in ("switch", "throw"):
            return
        try:
            origin, target = args
            if not self._rebased and run.is_task_greenlet(target):
                # First switch into a copy: nothing of the task ran yet, and every other
                # probe has done its setup. This is the state the copies start from.
                self._baseline = take()
                self._rebased = True
            if run.is_task_greenlet(origin) and not origin.dead:
                self._switched_out(run, origin)
            if run.is_task_greenlet(target):
                self._resumed(target)
        except Exception:  # a trace function must never break a switch
            return

    def _switched_out(self, run: ProbeRun, glet: Any) -> None:
        switch_site: Site | None = None
        located = False
        for change in diff(self._baseline, take()):
            if change.key in self._held:
                continue
            if not located:
                switch_site, located = app_site(glet.gr_frame, run.roots), True
            self._held[change.key] = _Held(change, switch_site, self._site_of(change.key, glet))
        if glet in self._seeds and glet not in self._seed_held:
            self._seed_held[glet] = (self._seeds[glet], app_site(glet.gr_frame, run.roots))
        for write in self._writes:
            if write.read is None:
                continue
            lo, hi = write.window
            frame = glet.gr_frame
            while frame is not None and frame.f_code is not write.code:
                frame = frame.f_back
            if frame is not None and lo < frame.f_lasti < hi:
                self._pending.setdefault(glet, []).append((
                    write, fingerprint(write.glob.value()), app_site(glet.gr_frame, run.roots)))

    def _resumed(self, glet: Any) -> None:
        for write, before, switch_site in self._pending.pop(glet, ()):
            now = fingerprint(write.glob.value())
            if id(write) not in self._confirmed and not _equal(before, now):
                self._confirmed[id(write)] = _Confirmed(before, now, switch_site)

    # -- begin / end -----------------------------------------------------------------
    def begin(self, run: ProbeRun) -> None:
        """Start from the clean state, then watch every switch out of a copy."""
        self._reset()
        # What the measured runs of this task left behind; put back so the copies start clean.
        self._leftover = diff(self._clean, take())
        restore(self._leftover)
        self._baseline = take()
        self._rebased = False
        try:
            self._writes = global_writes(task_function(run.task), run.roots)
        except Exception:  # unusual bytecode must not cost the rest of the probe
            self._writes = []
        self._initial = {w.glob: fingerprint(w.glob.value()) for w in self._writes}
        self._run = run
        self._install_wrappers()
        global _RECORDER
        _RECORDER = self
        if not self._installed:  # else still in the chain, under a probe that chained to us
            self._previous_trace = greenlet.settrace(self._trace_fn)
            self._installed = True
        self._active = True

    def end(self, run: ProbeRun, outcomes: list[dict[str, Any]]) -> list[Finding]:
        """Stop watching, put the baseline back, and say what was shared."""
        self._active = False
        global _RECORDER
        _RECORDER = None
        if greenlet.gettrace() is self._trace_fn:
            greenlet.settrace(self._previous_trace)
            self._previous_trace, self._installed = None, False
        # else a later probe chained to our trace: ours stays a pass-through until it is
        # back on top, and is reused rather than installed twice (that would loop)
        self._remove_wrappers()
        left = diff(self._baseline, take())
        restore(left)
        if self._seeds:
            random.seed()  # the original again: fresh entropy, as at start
        findings = self._state_findings(run, left)
        findings += self._seed_findings()
        findings += self._global_findings(run)
        self._run = None
        self._reset()  # drop the greenlets and values this run held on to
        return findings

    # -- findings --------------------------------------------------------------------
    def _state_findings(self, run: ProbeRun, left: list[Change]) -> list[Finding]:
        left_by_key = {c.key: c for c in left}
        groups: dict[Site | None, list[str]] = {}
        severities: dict[Site | None, str] = {}
        families: dict[Site | None, list[str]] = {}
        for key, held in self._held.items():
            where = held.made or held.switch
            text = held.change.describe()
            if held.made is not None:
                text += f" at {held.made}"
            if held.switch is not None:
                text += (f", and was still changed when the task switched away at "
                         f"{held.switch} ({held.switch.function})")
            else:
                text += ", and was still changed when the task switched away"
            text += _consequence(key)
            final = left_by_key.get(key)
            if final is not None:
                text += f"; after the run it was left {describe(key, final.after)}"
            groups.setdefault(where, []).append(text)
            severities[where] = "error"
            families.setdefault(where, []).append(_family(key))
        for change in left:
            if change.key in self._held:
                continue
            where = self._site_of(change.key, None)
            text = change.describe() + (f" at {where}" if where else "")
            text += (f" and was not put back by the end of the run ({run.concurrency} "
                     "copies): every task that runs after it in this process inherits it")
            groups.setdefault(where, []).append(text)
            severities.setdefault(where, "warning")
            families.setdefault(where, []).append(_family(change.key))
        reported = {c.key for c in left} | set(self._held)
        leftover = [c for c in self._leftover if c.key not in reported]
        if leftover:
            texts = [c.describe() for c in leftover]
            groups.setdefault(None, []).append(
                "; ".join(texts) + " after the task's measured runs, and was not put back "
                "(geventcheck restored it before the probe run)")
            severities.setdefault(None, "warning")
            families.setdefault(None, []).extend(_family(c.key) for c in leftover)
        findings = []
        for where, texts in groups.items():
            fixes = list(dict.fromkeys(_FIXES.get(f, "") for f in families[where]))
            findings.append(Finding(
                KIND, "error" if severities[where] == "error" else "warning",
                "; ".join(texts),
                file=_relative(where.file) if where else None,
                line=where.line if where else None,
                function=where.function if where else None,
                fix="; ".join(f for f in fixes if f) or None, phase="probe"))
        return findings

    def _seed_findings(self) -> list[Finding]:
        """One finding is enough, every copy seeds alike: the worst copy's."""
        findings = []
        for glet, made in sorted(self._seeds.items(), key=lambda i: i[0] not in self._seed_held):
            held = self._seed_held.get(glet)
            switch = held[1] if held else None
            text = "seeded the global random generator" + (f" at {made}" if made else "")
            if held is not None:
                text += (f" and then switched away at {switch}" if switch else
                         " and then switched away")
                text += (": the other tasks draw from the same generator meanwhile, so this "
                         "task's sequence is not reproducible and theirs becomes predictable")
            else:
                text += (": every task running in the process draws from that generator, so "
                         "their random values become predictable")
            findings.append(Finding(
                KIND, "error" if held is not None else "warning", text,
                file=_relative(made.file) if made else None, line=made.line if made else None,
                function=made.function if made else None, fix=_FIXES["random seed"],
                phase="probe"))
            break
        return findings

    def _global_findings(self, run: ProbeRun) -> list[Finding]:
        findings = []
        for write in self._writes:
            glob = write.glob
            w_site = write.site(write.write)
            start, final = self._initial.get(glob), fingerprint(glob.value())
            confirmed = self._confirmed.get(id(write))
            if write.pattern == "read-then-write" and write.read is not None:
                assigns = write.write.how == "="
                text = (f"module global {glob.label} is read at line {write.read.line}, then a "
                        f"call that may switch to another task (line {write.call_line}), then "
                        + (f"written at line {write.write.line} from what was read" if assigns
                           else f"changed at line {write.write.line} "
                                f"({_statement(glob, write.write.how)})"))
                outcome = ("this write overwrote that update (a lost update)" if assigns else
                           "this change acted on what it read before (a check-then-act race)")
                if confirmed is not None:
                    text += (f": another copy changed it from {_describe_fp(confirmed.before)} "
                             f"to {_describe_fp(confirmed.after)} while this one was switched "
                             f"out at {confirmed.switch}, and {outcome}")
                else:
                    text += (": on a gevent worker other copies run in between, and "
                             + outcome.replace("this", "the", 1))
            elif write.pattern == "write-then-read" and write.read is not None:
                text = (f"module global {glob.label} is written at line {write.write.line} and "
                        f"read back at line {write.read.line} after a call that may switch to "
                        f"another task (line {write.call_line})")
                if confirmed is not None:
                    text += (f": another copy changed it from {_describe_fp(confirmed.before)} "
                             f"to {_describe_fp(confirmed.after)} while this one was switched "
                             f"out at {confirmed.switch}, so the read saw the other task's value")
                else:
                    text += ": on a gevent worker the read may see another task's value"
            else:
                text = (f"{_how(glob, write.write.how)} at line "
                        f"{write.write.line}: under prefork a process runs one task at a "
                        "time, but on a gevent worker every concurrent task shares it")
            if start is not None and not _equal(start, final):
                text += (f"; over the probe run ({run.concurrency} copies at once) it went "
                         f"from {_describe_fp(start)} to {_describe_fp(final)}")
            findings.append(Finding(
                KIND, "error" if confirmed is not None else "warning", text,
                file=_relative(w_site.file), line=w_site.line, function=w_site.function,
                fix="keep per-task state in local variables, arguments and return values; "
                    "if it must be shared, hold a gevent.lock.Semaphore around the whole "
                    "read-modify-write (or use an atomic store: Redis INCR, an SQL UPDATE)",
                phase="probe"))
        return findings


def _how(glob: Global, how: str) -> str:
    """``writes module global x.COUNT`` / ``mutates module global x.CACHE (CACHE[...] = ...)``."""
    if how in ("=", "del"):
        return f"{'assigns' if how == '=' else 'deletes'} module global {glob.label}"
    return f"mutates module global {glob.label} ({_statement(glob, how)})"


def _statement(glob: Global, how: str) -> str:
    """The kind of statement that wrote a global: ``CACHE[...] = ...``, ``ITEMS.append(...)``."""
    if how == "del [...]":
        return f"del {glob.name}[...]"
    if how == "=":
        return f"{glob.name} = ..."
    if how.endswith("()"):
        return f"{glob.name}{how[:-2]}(...)"
    return f"{glob.name}{how} ..."


def _describe_fp(fp: Any) -> str:
    """A fingerprint as a value for a message."""
    if isinstance(fp, tuple) and len(fp) >= 2:
        kind = fp[0]
        if kind == "value":
            return _show(fp[1])
        if kind in ("dict", "list", "set", "object") and len(fp) == 3:
            return _show(fp[2])
    return "another object"


def _consequence(key: str) -> str:
    """Why holding this across a switch hurts, in a few words."""
    family = _family(key)
    if family == "stdio":
        return (": every task that ran meanwhile wrote into that stream, and tasks that "
                "restore it out of order leave it pointing at a dead buffer")
    if family == "cwd":
        return ": every task that ran meanwhile resolved relative paths against it"
    if family == "env":
        return ": every task that ran meanwhile (and every child process it started) saw it"
    return ": every task that ran meanwhile in this process used it too"
