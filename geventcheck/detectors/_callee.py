"""Naming the call a stalled line was making, from its source and its module's names.

Runs between measured runs, in the audited thread, never while a stall is under
way: parsing a file holds the GIL for as long as it takes. It reads no frame
object and calls no code of the app's: names are looked up in the module's
globals with ``inspect.getattr_static``.
"""

from __future__ import annotations

import ast
import ctypes
import inspect
import sys
import types
from functools import lru_cache


@lru_cache(maxsize=256)
def _tree(path: str) -> ast.Module | None:
    try:
        with open(path, "rb") as fh:
            return ast.parse(fh.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return None


def _callable_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _call_node(path: str, line: int, inner_function: str | None) -> ast.Call | None:
    """The call made on ``line``: the one into ``inner_function`` when the stack says which
    Python function it entered, else the outermost (Python evaluates it last)."""
    tree = _tree(path)
    if tree is None:
        return None
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and n.lineno == line]
    if not calls:
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and n.lineno <= line <= (n.end_lineno or n.lineno)]
        calls.sort(key=lambda n: n.lineno, reverse=True)  # innermost statement first
    if inner_function:
        named = [n for n in calls if _callable_name(n.func) == inner_function]
        if named:
            return named[0]
    return calls[0] if calls else None


def _static(obj: object, name: str) -> object | None:
    try:
        found: object = inspect.getattr_static(obj, name)
        return found
    except AttributeError:
        return None


def _resolve(node: ast.expr, module: types.ModuleType | None) -> object | None:
    if isinstance(node, ast.Name):
        if module is None:
            return None
        names = vars(module)
        if node.id in names:
            found: object = names[node.id]
            return found
        builtins = vars(sys.modules["builtins"])
        return builtins.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, module)
        return None if base is None else _static(base, node.attr)
    return None


def qualified_name(target: object) -> str | None:
    """``os.system``, ``ctypes usleep``, ``hashlib.pbkdf2_hmac``: what a reader recognises."""
    if isinstance(target, ctypes._CFuncPtr):  # type: ignore[attr-defined]
        return f"ctypes {_static(target, '__name__') or 'function'}"
    if isinstance(target, staticmethod | classmethod):
        target = target.__func__
    owner = _static(target, "__self__")
    objclass = _static(target, "__objclass__")
    qualname = _static(target, "__qualname__") or _static(target, "__name__")
    if not isinstance(qualname, str):
        return None
    module = _static(target, "__module__")
    if not isinstance(module, str):
        module = None
    if module is None and owner is not None and not isinstance(owner, types.ModuleType):
        module = type(owner).__module__
    if isinstance(objclass, type):
        module = objclass.__module__
    if isinstance(owner, types.ModuleType):
        module = owner.__name__
    module = {"posix": "os", "_hashlib": "hashlib"}.get(module or "", module)
    if module in (None, "builtins"):
        return qualname
    return f"{module}.{qualname}"


def module_of_file(path: str) -> types.ModuleType | None:
    for module in list(sys.modules.values()):
        if isinstance(module, types.ModuleType) and _static(module, "__file__") == path:
            return module
    return None


def name_call(path: str, line: int, inner_function: str | None = None) -> str | None:
    """The call on ``path:line``: qualified when its name is a module-level one
    (``os.system``, ``requests.get``), else as written (``cur.execute``)."""
    node = _call_node(path, line, inner_function)
    if node is None:
        return None
    written = ast.unparse(node.func)
    target = _resolve(node.func, module_of_file(path))
    if target is None:
        return written
    return qualified_name(target) or written
