"""Module globals the task's code writes, found in its bytecode.

A small abstract interpretation of the task function and the app functions it
calls (two levels deep) finds each write of a module global, and pairs it with a
read of the same global when a call that may switch lies between them: the
patterns that lose updates or read another task's value on a gevent worker.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import dataclasses
import dis
import inspect
import reprlib
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .._paths import is_audited_file, relative

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
        return f"{shown_path(self.file)}:{self.line}"


def shown_path(path: str) -> str:
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
    calls_to: dict[int, Any] = field(default_factory=dict)  # CALL offset -> app function
    # accesses a called app function makes, counted at the call (see global_writes)
    via: list[Access] = field(default_factory=list)

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
                    helper = next((t.callee for t in slots if t.kind == "func"), None)
                    if helper is not None:
                        out.calls_to[ins.offset] = helper
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
    summaries: dict[types.CodeType, list[Access]] = {}
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
                result.via = _through_helpers(code, result, roots, summaries)
                found += _pair(code, result)
                following += [c for c in result.callees if c.__code__ not in seen]
        level = following
    # A global paired with a read somewhere needs no second, unpaired finding from the
    # helper that writes it.
    paired = {w.glob for w in found if w.pattern is not None}
    return [w for w in found if w.pattern is not None or w.glob not in paired]


def _through_helpers(code: types.CodeType, result: _Scan, roots: tuple[str, ...],
                     summaries: dict[types.CodeType, list[Access]]) -> list[Access]:
    """The module globals each called app function reads or writes itself, as accesses at
    the call: ``set_user(me)``, a wait, then ``current_user()`` reads back what another
    task set, though neither helper waits."""
    lines = _line_table(code)
    via: list[Access] = []
    for offset, helper in result.calls_to.items():
        helper_code = helper.__code__
        if helper_code is code:
            continue
        if helper_code not in summaries:
            try:
                inner = scan(helper_code, helper.__globals__, roots)
            except (ValueError, TypeError, KeyError, IndexError):
                inner = _Scan()
            summaries[helper_code] = [
                a for a in inner.accesses.values()
                if a.glob is not None and a.kind in ("read", "write")
                and not inner.is_guarded(a.offset)]
        line = lines.get(offset, code.co_firstlineno)
        touched: dict[tuple[Global, str], Access] = {}
        for access in summaries[helper_code]:
            assert access.glob is not None
            touched.setdefault((access.glob, access.kind), Access(
                offset, line, access.kind, access.glob, f"via {helper.__name__}()"))
        via += touched.values()
    return via


def _pair(code: types.CodeType, result: _Scan) -> list[GlobalWrite]:
    accesses = sorted((a for a in [*result.accesses.values(), *result.via]
                       if not result.is_guarded(a.offset)), key=lambda a: a.offset)
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
        direct = [w for w in its_writes if not w.how.startswith("via ")]
        if best is not None or direct:  # else the helper's own scan reports its write
            found.append(best or GlobalWrite(glob, code, direct[0]))
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


def show(value: Any) -> str:
    return reprlib.repr(value)

