"""The release gate's policy: ``[tool.geventcheck]`` of the app's ``pyproject.toml``.

Every setting resolves in one fixed order: the command line, then a
``GEVENTCHECK_*`` environment variable, then the policy file, then the default.
A bad value is one ``PolicyError`` naming where it came from: the option, the
variable, or the policy file and line (tomllib keeps no positions, so the line
is found in the text, as scenarios do).
"""

from __future__ import annotations

import datetime
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._kinds import FINDING_KINDS

# The waiver kind for a task the audit did not certify (skipped, error): it has no finding.
NOT_CERTIFIED = "not-certified"
WAIVABLE_KINDS = (*(k for k in FINDING_KINDS if k != "warm-up"), NOT_CERTIFIED)

ENV_PREFIX = "GEVENTCHECK_"

MESSAGES = {
    "not_toml": "{where}: not valid TOML: {error}",
    "unreadable": "{where}: cannot read the policy: {error}",
    "no_table": "{where}: no [tool.geventcheck] table",
    "unknown_key": "{where}: unknown key {key!r} in {table} (allowed: {allowed})",
    "positive": "{source}: expected a positive number, got {value!r}",
    "positive_int": "{source}: expected a positive whole number, got {value!r}",
    "non_negative_int": "{source}: expected a whole number of 0 or more, got {value!r}",
    "integer": "{source}: expected a whole number, got {value!r}",
    "string": "{source}: expected a string, got {value!r}",
    "string_list": "{source}: expected an array of strings, got {value!r}",
    "waiver_table": "{where}: each waiver must be a table ([[{header}]]), got {value!r}",
    "waiver_missing": "{where}: waiver #{index} has no {key}: every waiver needs task, kind, "
                      "reason and expires (a date, e.g. expires = 2027-01-31)",
    "waiver_kind": "{where}: waiver #{index}: kind {value!r} is not one of {choices}",
    "waiver_reason": "{where}: waiver #{index}: reason must say why, got {value!r}",
    "waiver_date": "{where}: waiver #{index}: expires must be a TOML date such as 2027-01-31 "
                   "(unquoted), got {value!r}",
}


class PolicyError(Exception):
    """The policy or a setting is wrong; the message is the one line the user sees."""


@dataclass(frozen=True)
class Waiver:
    """A known problem accepted until a date, for the tasks a glob matches."""

    task: str
    kind: str
    reason: str
    expires: datetime.date
    index: int  # 1-based, in file order
    where: str  # file:line of its table

    def expired(self, today: datetime.date) -> bool:
        """A waiver holds through its expiry day and stops holding the day after."""
        return today > self.expires

    def describe(self) -> str:
        return f"waiver #{self.index} (task {self.task!r}, kind {self.kind!r}) at {self.where}"


@dataclass(frozen=True)
class Setting:
    """One resolved value and where it came from, for error messages."""

    value: Any
    source: str


@dataclass(frozen=True)
class Policy:
    """The policy file as read; ``path`` is None when there is none."""

    path: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int | None] = field(default_factory=dict)
    waivers: tuple[Waiver, ...] = ()

    @property
    def base(self) -> str:
        """The folder relative paths in the policy are relative to."""
        return os.path.dirname(os.path.abspath(self.path)) if self.path else os.getcwd()

    def source(self, key: str) -> str:
        line = self.lines.get(key)
        return f"{self.path}:{line}" if line else f"{self.path}"


# key -> the parser that checks its value, whichever source it came from; the variable is
# GEVENTCHECK_<KEY>.
KEYS: dict[str, str] = {
    "app": "string",
    "django_settings": "string",
    "scenario": "path",
    "workdir": "path",
    "tasks": "string_list",
    "gevent_queues": "string_list",
    "concurrency": "positive_int",
    "runs": "positive_int",
    "threshold_ms": "positive",
    "warn_ms": "positive",
    "task_timeout": "positive",
    "explore": "non_negative_int",
    "explore_seed": "integer",
    "shims": "string_list",
    "baseline": "path",
    # the pytest plugin's own (threshold_ms and warn_ms above are shared with it)
    "record_calls": "positive_int",
}
_TABLE_KEYS = {*KEYS, "waivers"}
_WAIVER_KEYS = {"task", "kind", "reason", "expires"}


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def find_pyproject(start: str) -> str | None:
    """The first ``pyproject.toml`` with a ``[tool.geventcheck]`` table, from ``start`` up."""
    here = os.path.abspath(start)
    while True:
        candidate = os.path.join(here, "pyproject.toml")
        if os.path.isfile(candidate):
            try:
                with open(candidate, "rb") as fh:
                    raw = fh.read()
            except OSError:
                raw = b""
            try:
                data = tomllib.loads(raw.decode("utf-8", errors="replace"))
            except tomllib.TOMLDecodeError:  # broken but meant for us: load_policy says where
                if b"tool.geventcheck" in raw:
                    return candidate
                data = {}
            if isinstance(data.get("tool"), dict) and "geventcheck" in data["tool"]:
                return candidate
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


class _Lines:
    """Finds the line of a key inside a table, since tomllib does not keep positions."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def header(self, name: str, nth: int = 0) -> int | None:
        """Line of the ``nth`` ``[name]`` or ``[[name]]`` header (0-based)."""
        pattern = re.compile(r"^\s*\[\[?\s*" + re.escape(name).replace(r"\.", r"\s*\.\s*")
                             + r"\s*\]\]?\s*(#.*)?$")
        seen = 0
        for number, line in enumerate(self.lines):
            if pattern.match(line):
                if seen == nth:
                    return number + 1
                seen += 1
        return None

    def key(self, key: str, after: int | None) -> int | None:
        """Line of ``key = ...`` at or after line ``after``, before the next table header."""
        pattern = re.compile(r'^\s*"?' + re.escape(key) + r'"?\s*=')
        for number in range(after or 0, len(self.lines)):  # ``after`` is 1-based
            line = self.lines[number]
            if line.lstrip().startswith("["):
                break
            if pattern.match(line):
                return number + 1
        return None


def load_policy(path: str, *, explicit: bool) -> Policy:
    """Read and check a policy file. A ``pyproject.toml`` (or any file with a ``[tool]``
    table) keeps it in ``[tool.geventcheck]``; a file given with --config may also hold
    the keys at its top level."""
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        raise PolicyError(MESSAGES["unreadable"].format(where=path, error=exc.strerror)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(MESSAGES["not_toml"].format(where=path, error=exc)) from None
    lines = _Lines(text)
    tool = data.get("tool")
    if isinstance(tool, dict) and "geventcheck" in tool:
        table, prefix = tool["geventcheck"], "tool.geventcheck"
    elif explicit and os.path.basename(path) != "pyproject.toml":
        table, prefix = data, ""
    else:
        raise PolicyError(MESSAGES["no_table"].format(where=path))
    if not isinstance(table, dict):
        raise PolicyError(MESSAGES["no_table"].format(where=path))
    head = lines.header(prefix) if prefix else None
    found: dict[str, int | None] = {}
    for key in table:
        line = lines.key(key, head)
        found[key] = line
        if key not in _TABLE_KEYS:
            where = f"{path}:{line}" if line else path
            raise PolicyError(MESSAGES["unknown_key"].format(
                where=where, key=key, table=f"[{prefix}]" if prefix else "the policy",
                allowed=", ".join(sorted(_TABLE_KEYS))))
    policy = Policy(path=path, values={k: v for k, v in table.items() if k != "waivers"},
                    lines=found)
    header = f"{prefix}.waivers" if prefix else "waivers"
    waivers = _waivers(policy, lines, table.get("waivers", []), header)
    for key, value in policy.values.items():  # every value checked now, used or not
        check(key, value, policy.source(key))
    return Policy(path=path, values=policy.values, lines=found, waivers=waivers)


def _waivers(policy: Policy, lines: _Lines, raw: Any, header: str) -> tuple[Waiver, ...]:
    path = policy.path or ""
    if not isinstance(raw, list):
        where = policy.source("waivers")
        raise PolicyError(MESSAGES["waiver_table"].format(where=where, header=header, value=raw))
    waivers = []
    for index, entry in enumerate(raw, start=1):
        head = lines.header(header, index - 1)
        where = f"{path}:{head}" if head else policy.source("waivers")
        if not isinstance(entry, dict):
            raise PolicyError(MESSAGES["waiver_table"].format(where=where, header=header,
                                                              value=entry))
        for key in entry:
            if key not in _WAIVER_KEYS:
                line = lines.key(key, head) if head else None
                raise PolicyError(MESSAGES["unknown_key"].format(
                    where=f"{path}:{line}" if line else where, key=key,
                    table=f"waiver #{index}", allowed=", ".join(sorted(_WAIVER_KEYS))))
        for key in ("task", "kind", "reason", "expires"):
            if key not in entry:
                raise PolicyError(MESSAGES["waiver_missing"].format(where=where, index=index,
                                                                     key=key))

        def at(key: str, head: int | None = head, where: str = where) -> str:
            line = lines.key(key, head) if head else None
            return f"{path}:{line}" if line else where

        task = check("task", entry["task"], at("task"), parser="string")
        kind = entry["kind"]
        if kind not in WAIVABLE_KINDS:
            raise PolicyError(MESSAGES["waiver_kind"].format(
                where=at("kind"), index=index, value=kind, choices=", ".join(WAIVABLE_KINDS)))
        reason = entry["reason"]
        if not isinstance(reason, str) or not reason.strip():
            raise PolicyError(MESSAGES["waiver_reason"].format(where=at("reason"), index=index,
                                                               value=reason))
        expires = entry["expires"]
        if not isinstance(expires, datetime.date) or isinstance(expires, datetime.datetime):
            raise PolicyError(MESSAGES["waiver_date"].format(where=at("expires"), index=index,
                                                             value=expires))
        waivers.append(Waiver(task, kind, reason.strip(), expires, index, where))
    return tuple(waivers)


def _positive(value: Any, source: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise PolicyError(MESSAGES["positive"].format(source=source, value=value)) from None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise PolicyError(MESSAGES["positive"].format(source=source, value=value))
    return float(value)


def _int(message: str, minimum: int | None) -> Callable[[Any, str], int]:
    def parse(value: Any, source: str) -> int:
        original = value
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise PolicyError(MESSAGES[message].format(source=source,
                                                           value=original)) from None
        if isinstance(value, bool) or not isinstance(value, int) or (
                minimum is not None and value < minimum):
            raise PolicyError(MESSAGES[message].format(source=source, value=original))
        return value

    return parse


def _string(value: Any, source: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(MESSAGES["string"].format(source=source, value=value))
    return value


def _string_list(value: Any, source: str) -> tuple[str, ...]:
    if isinstance(value, str):  # from the environment: comma-separated
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if not isinstance(value, list | tuple) or not all(
            isinstance(v, str) and v.strip() for v in value):
        raise PolicyError(MESSAGES["string_list"].format(source=source, value=value))
    return tuple(value)


_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "string": _string,
    "path": _string,
    "string_list": _string_list,
    "positive": _positive,
    "positive_int": _int("positive_int", 1),
    "non_negative_int": _int("non_negative_int", 0),
    "integer": _int("integer", None),
}


def check(key: str, value: Any, source: str, parser: str | None = None) -> Any:
    """``value`` parsed for ``key``, or a PolicyError naming ``source``."""
    return _PARSERS[parser or KEYS[key]](value, source)


def resolve(key: str, cli: Setting | None, policy: Policy, default: Any,
            environ: Mapping[str, str] | None = None) -> Setting:
    """CLI, then ``GEVENTCHECK_<KEY>``, then the policy file, then the default.

    Relative paths from the policy file are made relative to the file's folder.
    """
    environ = os.environ if environ is None else environ
    if cli is not None:
        return Setting(check(key, cli.value, cli.source), cli.source)
    name = env_name(key)
    if environ.get(name, "").strip():
        return Setting(check(key, environ[name], name), name)
    if key in policy.values:
        source = policy.source(key)
        value = check(key, policy.values[key], source)
        if KEYS[key] == "path":
            value = os.path.join(policy.base, value)
        return Setting(value, source)
    return Setting(default, "default")
