"""Thread-local state that greenlets do not get a copy of (``thread-local``).

On a gevent worker every task runs in a greenlet of one OS thread. A native
``_thread._local`` (``threading.local()`` created before patching, gevent's
original, or one made in C) is therefore one object shared by every task
running at once, and a ``ContextVar`` set at import or in ``worker_init`` is
unset inside tasks, because a new greenlet starts with an empty context.
Django keeps its connections in a native local when ``django.db`` was imported
before patching, so all greenlets share one ``DatabaseWrapper`` per alias.

What a task touches is measured during the probe run: the app code its
greenlets execute (a trace function on Python calls only, which names the
globals that code refers to), the locals' contents before and after, and the
value each context variable has inside the task greenlets at ``task_prerun``.
"""

from __future__ import annotations

import ast
import contextvars
import dis
import functools
import gc
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, FrameType, ModuleType
from typing import Any

import greenlet

from .._model import Finding
from .._paths import is_audited_file, relative
from ._probe import ProbeRun

KINDS = ("thread-local",)

_UNSET: Any = object()
# Django's error when a greenlet uses the DatabaseWrapper another greenlet created.
_SHARED_WRAPPER = "can only be used in that same thread"
# Native locals that live inside these packages are theirs to manage, not the app's.
_INTERNAL = ("gevent", "greenlet", "geventcheck", "_thread", "threading")

FIX_NATIVE = (
    "create it with threading.local() after gevent has patched (gevent.local.local: one "
    "per greenlet, so one per task), never with the original _thread._local; or pass the "
    "value explicitly"
)
FIX_CONTEXTVAR = (
    "pass the value to the task as an argument, or set it for every task in a "
    "task_prerun receiver: a value set at import or in worker_init never reaches the "
    "greenlet a gevent worker runs a task in"
)
FIX_DJANGO = (
    "call gevent.monkey.patch_all() before anything imports django (celery -A proj worker "
    "-P gevent does; a custom entry point, a manage.py wrapper, sitecustomize or a .pth "
    "hook that imports Django first does not), so django.db.connections becomes "
    "greenlet-local: one connection per task greenlet"
)


def native_local_type() -> type:
    """The unpatched ``_thread._local``, whatever patching did to ``threading.local``."""
    from gevent.monkey import get_original

    native: type = get_original("_thread", "_local")
    return native


def task_of(glet: Any, run: ProbeRun) -> Any | None:
    """The task copy a greenlet works for: itself, or the copy that spawned it."""
    for _ in range(64):
        if glet is None:
            return None
        if run.is_task_greenlet(glet):
            return glet
        spawner = getattr(glet, "spawning_greenlet", None)  # a weakref on gevent.Greenlet
        glet = spawner() if spawner is not None else getattr(glet, "parent", None)
    return None


@dataclass(frozen=True)
class Holder:
    """Where the app keeps an object: ``module.attr`` or ``module.Class.attr``."""

    module: str
    attr: str
    file: str | None
    line: int | None
    source: str | None  # the right-hand side of the assignment, when found

    @property
    def name(self) -> str:
        return f"{self.module}.{self.attr}"

    def describe(self) -> str:
        return f"{self.name} = {self.source}" if self.source else self.name


@dataclass
class _Candidate:
    obj: Any
    holders: list[Holder]
    before: dict[str, Any] | None = None  # a native local's attributes at begin()
    outer: Any = _UNSET  # a context variable's value in the runner's context
    # its values in each task greenlet, at task_prerun and at task_postrun
    inside: list[Any] = field(default_factory=list)
    after: list[Any] = field(default_factory=list)

    @property
    def holder(self) -> Holder:
        """The defining holder: the one whose module assigns it, else the first seen."""
        return next((h for h in self.holders if h.line is not None), self.holders[0])


@functools.lru_cache(maxsize=512)
def _assignments(path: str) -> dict[str, tuple[int, str | None]]:
    """Module-level and class-level assignments of a source file: name -> (line, value)."""
    try:
        source = Path(path).read_text(encoding="utf-8")
        tree = ast.parse(source, path)
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return {}
    found: dict[str, tuple[int, str | None]] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef) and not prefix:
                visit(node.body, f"{node.name}.")
                continue
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets, value = [node.target], node.value
            else:
                continue
            text = ast.get_source_segment(source, value)
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        found.setdefault(prefix + name.id, (node.lineno, text))

    visit(tree.body, "")
    return found


def _holder(module: ModuleType, attr: str) -> Holder:
    file = getattr(module, "__file__", None)
    line, source = _assignments(file).get(attr, (None, None)) if file else (None, None)
    return Holder(module.__name__, attr, relative(file) if file else None, line, source)


def app_modules(roots: tuple[str, ...]) -> list[ModuleType]:
    """Loaded modules whose file is the app's own code."""
    found = []
    for module in list(sys.modules.values()):
        if not issubclass(type(module), ModuleType):
            continue
        file = vars(module).get("__file__")
        if isinstance(file, str) and is_audited_file(file, roots):
            found.append(module)
    return found


def _app_objects(roots: tuple[str, ...], kinds: tuple[type, ...]) -> dict[int, _Candidate]:
    """Objects of ``kinds`` held as module or class attributes of the app's modules.

    Types are tested with ``type()``, never ``isinstance``: a lazy object (Django's
    settings, say) would evaluate itself when asked for its ``__class__``.
    """
    found: dict[int, _Candidate] = {}

    def consider(value: Any, module: ModuleType, attr: str) -> None:
        if issubclass(type(value), kinds):
            cand = found.setdefault(id(value), _Candidate(value, []))
            cand.holders.append(_holder(module, attr))

    for module in app_modules(roots):
        for attr, value in list(vars(module).items()):
            consider(value, module, attr)
            if issubclass(type(value), type) and value.__dict__.get("__module__") \
                    == module.__name__:
                for cattr, cvalue in list(value.__dict__.items()):
                    consider(cvalue, module, f"{value.__name__}.{cattr}")
    return found


def _local_dict(local: Any) -> dict[str, Any]:
    """The attributes a native local holds for this OS thread (so for every greenlet)."""
    native: Any = native_local_type()  # its getattro, past any subclass's override
    attrs: dict[str, Any] = native.__getattribute__(local, "__dict__")
    return attrs


def _has_own_init(kind: type, native: type) -> bool:
    return any("__init__" in vars(c) for c in kind.__mro__[:kind.__mro__.index(native)])


class _CodeLog:
    """Which app code the task's greenlets run: a trace function on Python calls only."""

    def __init__(self, run: ProbeRun) -> None:
        self.run = run
        self.ran: dict[CodeType, dict[str, Any]] = {}  # code -> the globals it ran with
        self._foreign: set[CodeType] = set()
        self._previous: Any = None
        self._installed: Any = None

    def start(self) -> None:
        self._previous = sys.gettrace()
        self._installed = self._trace
        sys.settrace(self._installed)

    def stop(self) -> None:
        if self._installed is not None:
            sys.settrace(self._previous)
            self._installed = None

    def _trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        code = frame.f_code
        if code not in self.ran and code not in self._foreign:
            if not is_audited_file(code.co_filename, self.run.roots):
                self._foreign.add(code)
            elif task_of(greenlet.getcurrent(), self.run) is not None:
                self.ran[code] = frame.f_globals
        previous = self._previous
        return previous(frame, event, arg) if previous is not None else None


@dataclass(frozen=True)
class _Use:
    """A place in app code that refers to a candidate by name."""

    file: str
    line: int | None
    function: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{self.function}() at {where}"


def _line_of(code: CodeType, name: str) -> int | None:
    for instr in dis.get_instructions(code):
        if instr.argval == name and instr.opname.startswith(("LOAD_", "STORE_", "DELETE_")):
            return instr.positions.lineno if instr.positions else None
    return None


def _uses(cand: _Candidate, ran: dict[CodeType, dict[str, Any]]) -> list[_Use]:
    """App code run by the task that names the candidate, directly or via its holder."""
    uses = []
    for code, globs in ran.items():
        names = set(code.co_names)
        hit = None
        for name in names:
            value = globs.get(name, _UNSET)
            if value is cand.obj:
                hit = name
            elif issubclass(type(value), ModuleType | type):
                hit = next((a for a in names if vars(value).get(a, _UNSET) is cand.obj), None)
            if hit:
                break
        if hit is None:  # self.attr in a method of the class that holds it
            for h in cand.holders:
                cls, _, attr = h.attr.rpartition(".")
                if cls and globs.get("__name__") == h.module and attr in names \
                        and code.co_qualname.startswith(f"{cls}."):
                    hit = attr
        if hit is not None:
            uses.append(_Use(relative(code.co_filename), _line_of(code, hit), code.co_name))
    return sorted(uses, key=lambda u: (u.file, u.line or 0))


def _changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    keys = before.keys() | after.keys()
    return sorted(k for k in keys if before.get(k, _UNSET) is not after.get(k, _UNSET))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _get_or_lookup_error(var: contextvars.ContextVar[Any]) -> Any:
    try:
        return var.get()
    except LookupError:
        return _UNSET


def _holder_by_referrers(obj: Any) -> Holder | None:
    """The module or class attribute holding an object found with ``gc``."""
    by_dict = {id(vars(m)): m for m in list(sys.modules.values())
               if issubclass(type(m), ModuleType)}
    for ref in gc.get_referrers(obj):
        if type(ref) is not dict:
            continue
        attr = next((k for k, v in ref.items() if v is obj), None)
        if not isinstance(attr, str):
            continue
        module = by_dict.get(id(ref))
        if module is not None:
            return _holder(module, attr)
        for owner in gc.get_referrers(ref):
            if isinstance(owner, type) and owner.__dict__.get(attr) is obj:
                module = sys.modules.get(owner.__module__)
                if module is not None:
                    return _holder(module, f"{owner.__qualname__}.{attr}")
    return None


def django_storage_is_native() -> bool | None:
    """Whether ``django.db.connections`` keeps its wrappers in a native thread-local.

    asgiref >= 3.8 gives a ``thread_critical`` Local a ``threading.local()`` as
    ``_storage`` when the Local is made, which is when ``django.db`` is imported;
    older Django used a ``threading.local`` directly. None: Django is not loaded.
    """
    db = sys.modules.get("django.db")
    handler = getattr(db, "connections", None) if db is not None else None
    if handler is None:
        return None
    native = native_local_type()
    local = handler.__dict__.get("_connections")
    if issubclass(type(local), native):
        return True
    try:
        storage = object.__getattribute__(local, "_storage")
    except AttributeError:
        return False
    return issubclass(type(storage), native)


def _django_storage() -> Any:
    db = sys.modules.get("django.db")
    local = db.connections.__dict__.get("_connections") if db is not None else None
    try:
        return object.__getattribute__(local, "_storage")
    except AttributeError:
        return local


class Probe:
    """Native thread-locals and context variables a task relies on."""

    kinds: tuple[str, ...] = KINDS

    def __init__(self) -> None:
        self._run: ProbeRun | None = None
        self._natives: dict[int, _Candidate] = {}
        # native locals outside the app's modules, found with gc
        self._others: dict[int, _Candidate] = {}
        self._vars: dict[int, _Candidate] = {}
        self._log: _CodeLog | None = None
        self._django: dict[str, Any] | None = None
        self._opened = 0
        self._uid = ("geventcheck.threadlocals", id(self))

    def begin(self, run: ProbeRun) -> None:
        try:
            self._begin(run)
        except BaseException:
            self._undo()  # the runner skips end() of a probe whose begin() failed
            raise

    def _undo(self) -> None:
        if self._log is not None:
            self._log.stop()
        self._disconnect_signals()
        self._natives, self._others, self._vars, self._log = {}, {}, {}, None
        self._run, self._django = None, None

    def _begin(self, run: ProbeRun) -> None:
        self._run = run
        native = native_local_type()
        found = _app_objects(run.roots, (native, contextvars.ContextVar))
        self._natives = {k: c for k, c in found.items() if issubclass(type(c.obj), native)}
        self._vars = {}
        for key, cand in found.items():
            if type(cand.obj) is contextvars.ContextVar:
                cand.outer = cand.obj.get(_UNSET)
                if cand.outer is not _UNSET:
                    self._vars[key] = cand
        for cand in self._natives.values():
            cand.before = dict(_local_dict(cand.obj))
        self._others = {}
        for obj in gc.get_objects():
            kind = type(obj)
            # A subclass with its own __init__ would run it on first access from here.
            if issubclass(kind, native) and id(obj) not in self._natives \
                    and not _has_own_init(kind, native):
                self._others[id(obj)] = _Candidate(obj, [], before=dict(_local_dict(obj)))
        self._django = None
        self._opened = 0
        if django_storage_is_native():
            storage = _django_storage()
            self._others.pop(id(storage), None)  # said once, as what it is
            self._django = dict(_local_dict(storage))
        self._connect_signals()
        self._log = None
        if self._natives or self._vars:
            self._log = _CodeLog(run)
            self._log.start()

    def _connect_signals(self) -> None:
        if self._vars:
            from celery import signals

            signals.task_prerun.connect(self._on_prerun, weak=False, dispatch_uid=self._uid)
            signals.task_postrun.connect(self._on_postrun, weak=False, dispatch_uid=self._uid)
        if self._django is not None:
            from django.db.backends.signals import connection_created

            connection_created.connect(self._on_connection, weak=False, dispatch_uid=self._uid)

    def _disconnect_signals(self) -> None:
        if "celery.signals" in sys.modules:
            from celery import signals

            signals.task_prerun.disconnect(self._on_prerun, dispatch_uid=self._uid)
            signals.task_postrun.disconnect(self._on_postrun, dispatch_uid=self._uid)
        if "django.db.backends.signals" in sys.modules:
            from django.db.backends.signals import connection_created

            connection_created.disconnect(dispatch_uid=self._uid)

    def _on_prerun(self, sender: Any = None, **kwargs: Any) -> None:
        """Runs in the task's greenlet, after the app's own prerun receivers."""
        run = self._run
        if run is not None and run.is_task_greenlet(greenlet.getcurrent()):
            for cand in self._vars.values():
                cand.inside.append(cand.obj.get(_UNSET))

    def _on_postrun(self, sender: Any = None, **kwargs: Any) -> None:
        """Still unset when the task is done: the task did not set it itself either."""
        run = self._run
        if run is not None and run.is_task_greenlet(greenlet.getcurrent()):
            for cand in self._vars.values():
                cand.after.append(cand.obj.get(_UNSET))

    def _on_connection(self, sender: Any = None, **kwargs: Any) -> None:
        if self._run is not None and task_of(greenlet.getcurrent(), self._run) is not None:
            self._opened += 1

    def end(self, run: ProbeRun, outcomes: list[dict[str, Any]]) -> list[Finding]:
        if self._log is not None:
            self._log.stop()
        self._disconnect_signals()
        try:
            ran = self._log.ran if self._log is not None else {}
            findings = [f for c in self._natives.values() if (f := self._native(c, ran))]
            findings += [f for c in self._others.values() if (f := self._other(c))]
            findings += [f for c in self._vars.values() if (f := self._var(c, ran))]
            django = self._django_finding(outcomes)
            return findings + ([django] if django is not None else [])
        finally:
            self._undo()

    def _native(self, cand: _Candidate, ran: dict[CodeType, dict[str, Any]]) -> Finding | None:
        written = _changed(cand.before or {}, _local_dict(cand.obj))
        uses = _uses(cand, ran)
        if not written and not uses:
            return None
        holder = cand.holder
        kind = type(cand.obj)
        what = "a native thread-local (_thread._local)" if kind is native_local_type() \
            else f"a {kind.__name__}, a subclass of the native _thread._local"
        where = f" ({'; '.join(str(u) for u in uses[:3])})" if uses else ""
        if written:
            attrs = ", ".join(repr(k) for k in written[:5])
            effect = (f"while {self._run_copies()} copies ran at once the task wrote {attrs} "
                      f"to it{where}: every task running at once sees and overwrites the same "
                      "values")
        else:
            effect = (f"the task reads it{where}: every task running at once sees the one "
                      "value, including what any other task stores there")
        return Finding(
            "thread-local", "error" if written else "warning",
            f"{holder.describe()} is {what}, created before gevent patched threading or "
            f"with gevent's original: all greenlets of a gevent worker share it; {effect}",
            file=holder.file, line=holder.line, phase="probe", fix=FIX_NATIVE)

    def _run_copies(self) -> int:
        return self._run.concurrency if self._run is not None else 0

    def _other(self, cand: _Candidate) -> Finding | None:
        """A native local outside the app's modules that the run wrote to."""
        written = _changed(cand.before or {}, _local_dict(cand.obj))
        if not written:
            return None
        holder = _holder_by_referrers(cand.obj)
        if holder is None or holder.module.partition(".")[0] in _INTERNAL:
            return None
        attrs = ", ".join(repr(k) for k in written[:5])
        return Finding(
            "thread-local", "warning",
            f"{holder.name} is a native thread-local (_thread._local, created before gevent "
            f"patched threading) and the task wrote {attrs} to it: every greenlet of a "
            "gevent worker shares it",
            file=holder.file, line=holder.line, function=holder.name, phase="probe",
            fix=f"import {holder.module} only after gevent.monkey.patch_all()")

    def _var(self, cand: _Candidate, ran: dict[CodeType, dict[str, Any]]) -> Finding | None:
        if cand.inside:
            seen = len(cand.inside)
            unset = min(sum(1 for v in cand.inside if v is _UNSET),
                        sum(1 for v in cand.after if v is _UNSET))
        else:  # no task_prerun seen: ask a new greenlet, which is what a task gets
            seen = 1
            unset = int(greenlet.greenlet(lambda: cand.obj.get(_UNSET)).switch() is _UNSET)
        uses = _uses(cand, ran)
        if not unset or not uses:
            return None
        holder = cand.holder
        where = "; ".join(str(u) for u in uses[:3])
        value = _short(cand.outer)
        # What get() without an argument gives in a new greenlet, as a task's would.
        got = greenlet.greenlet(lambda: _get_or_lookup_error(cand.obj)).switch()
        gets = "raises LookupError unless given a default" if got is _UNSET \
            else f"returns the variable's default, {_short(got)}"
        return Finding(
            "thread-local", "warning",
            f"{holder.name} (ContextVar {cand.obj.name!r}) holds {value} in the worker's own "
            "context (set at import or in worker_init), but a gevent worker runs each task "
            f"in a new greenlet, which starts with an empty context: it was unset in {unset} "
            f"of {seen} task greenlets, so {where} reads it unset: get() {gets}",
            file=holder.file, line=holder.line, phase="probe", fix=FIX_CONTEXTVAR)

    def _django_finding(self, outcomes: list[dict[str, Any]]) -> Finding | None:
        if self._django is None:
            return None
        shared = sum(1 for o in outcomes if _SHARED_WRAPPER in str(o.get("error") or ""))
        grew = _changed(self._django, _local_dict(_django_storage()))
        if not (shared or grew or self._opened):
            return None
        if shared:
            effect = (f"{shared} of {len(outcomes)} concurrent copies failed with Django's "
                      "\"DatabaseWrapper objects created in a thread can only be used in that "
                      "same thread\"")
        else:
            effect = "the task's greenlets all got the same connection"
        return Finding(
            "thread-local", "error",
            "django.db.connections keeps its connections in a native thread-local: "
            "django.db was imported before gevent patched threading, so every greenlet of "
            f"the worker shares one DatabaseWrapper per alias; {effect}",
            phase="probe", fix=FIX_DJANGO)
