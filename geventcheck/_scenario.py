"""Scenario files: which app to audit, the inputs its tasks need, and their environment.

A scenario is TOML, validated strictly: an unknown key, a wrong type or a bad
value is one ``ScenarioError`` whose message names the file and the line.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from .services import HttpService, ProxyService, Route, Service, SmtpService, check_services

_TOP_KEYS = {
    "app", "django_settings", "paths", "workdir", "env", "settings", "tasks", "services", "allow",
    "allow_publish", "bench",
}
_BENCH_KEYS = {"tasks", "cpu_task", "count"}
_SERVICE_KEYS = {
    "http": {"name", "tls", "port", "hosts", "routes", "default"},
    "smtp": {"name", "port", "hosts", "latency_ms", "starttls"},
    "proxy": {"name", "target", "port", "latency_ms"},
}
_ROUTE_KEYS = {"method", "path", "status", "json", "body", "headers", "latency_ms", "jitter_ms"}
_CALL_KEYS = {"args", "kwargs"}
_TASK_KEYS = {"calls"}
_TEMPLATE = re.compile(r"\{([A-Za-z_][\w-]*)\.(url|host|port|scheme)\}")


class ScenarioError(Exception):
    """The scenario file is wrong; the message is the one line the user sees."""


@dataclass(frozen=True)
class Call:
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchBatch:
    """``[bench]``: the I/O tasks ``geventcheck bench`` sends, and the CPU task it mixes in."""

    tasks: tuple[str, ...]
    count: int = 400
    cpu_task: str | None = None


@dataclass(frozen=True)
class Scenario:
    path: str
    app: str | None = None
    django_settings: str | None = None
    workdir: str | None = None
    paths: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    calls: dict[str, tuple[Call, ...]] = field(default_factory=dict)
    services: tuple[Service, ...] = ()
    allow: tuple[tuple[str, int | None], ...] = ()
    allow_publish: bool = False  # send what tasks publish to the app's real broker
    bench: BenchBatch | None = None
    # line of each task's table in the file, for errors found once the app is loaded
    task_lines: dict[str, int | None] = field(default_factory=dict)

    def unknown_task_error(self, name: str, known: list[str]) -> ScenarioError:
        import difflib

        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        line = self.task_lines.get(name)
        where = f"{self.path}:{line}" if line else self.path
        return ScenarioError(f"{where}: task {name!r} is not a task of the app{hint}")

    def calls_as_json(self) -> dict[str, list[dict[str, Any]]]:
        return {name: [{"args": list(c.args), "kwargs": c.kwargs} for c in calls]
                for name, calls in self.calls.items()}

    def rendered_env(self, values: dict[str, str]) -> dict[str, str]:
        """``env`` with ``{service.url}``-style placeholders filled in."""
        return {k: render(v, values, self.path) for k, v in self.env.items()}

    def rendered_settings(self, values: dict[str, str]) -> dict[str, Any]:
        """Django settings, with placeholders filled in inside strings."""
        return {k: render(v, values, self.path) if isinstance(v, str) else v
                for k, v in self.settings.items()}


def render(text: str, values: dict[str, str], where: str = "scenario") -> str:
    def sub(match: re.Match[str]) -> str:
        key = f"{match[1]}.{match[2]}"
        if key not in values:
            raise ScenarioError(f"{where}: {{{key}}} names no service of this scenario")
        return values[key]

    return _TEMPLATE.sub(sub, text)


class _Reader:
    """Finds the line of a key in the raw text, since tomllib does not keep positions."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, *names: str) -> int | None:
        """The line of the last of ``names`` (a key or a table name), searched in order."""
        start = 0
        found = None
        for name in names:
            quoted = re.escape(name)
            key = re.compile(r'(^|[\s{,])"?' + quoted + r'"?\s*=')
            header = re.compile(r'^\s*\[\[?(?:[^\]]*[\s."])?"?' + quoted + r'"?\s*(\.|\])')
            for number in range(start, len(self.lines)):
                line = self.lines[number]
                if key.search(line) or header.search(line):
                    found = number + 1
                    start = number
                    break
        return found

    def nth_header(self, header: str, after: int | None, index: int) -> int | None:
        """Line of the ``index``-th ``[[header]]`` table after line ``after``."""
        seen = 0
        for number in range(after or 0, len(self.lines)):
            if self.lines[number].strip().replace(" ", "") == f"[[{header}]]":
                if seen == index:
                    return number + 1
                seen += 1
        return None

    def error(self, message: str, *names: str) -> ScenarioError:
        line = self.line_of(*names) if names else None
        where = f"{self.path}:{line}" if line else self.path
        return ScenarioError(f"{where}: {message}")


def _expect(reader: _Reader, value: Any, kind: type | tuple[type, ...], what: str,
            *names: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(
            k.__name__ for k in kind)
        names_ = {"str": "a string", "list": "an array", "dict": "a table", "int": "an integer"}
        raise reader.error(
            f"{what} must be {names_.get(expected, expected)}, got {type(value).__name__} "
            f"{value!r}", *names)
    return value


def _unknown(reader: _Reader, table: dict[str, Any], allowed: set[str], where: str,
             *names: str) -> None:
    for key in table:
        if key not in allowed:
            raise reader.error(f"unknown key {key!r} in {where} (allowed: "
                               f"{', '.join(sorted(allowed))})", *names, key)


def _calls(reader: _Reader, name: str, table: Any) -> tuple[Call, ...]:
    table = _expect(reader, table, dict, f"[tasks.{name!r}]", name)
    _unknown(reader, table, _TASK_KEYS, f"[tasks.{name!r}]", name)
    raw = _expect(reader, table.get("calls", []), list, f"tasks.{name!r}.calls", name, "calls")
    if not raw:
        raise reader.error(f"task {name!r} has no calls: give at least one "
                           "{ args = [...], kwargs = {...} }", name)
    calls = []
    for entry in raw:
        call = _expect(reader, entry, dict, f"a call of {name!r}", name, "calls")
        _unknown(reader, call, _CALL_KEYS, f"a call of {name!r}", name)
        args = _expect(reader, call.get("args", []), list, f"args of {name!r}", name, "args")
        kwargs = _expect(reader, call.get("kwargs", {}), dict, f"kwargs of {name!r}", name,
                         "kwargs")
        calls.append(Call(tuple(args), dict(kwargs)))
    return tuple(calls)


def load_scenario(path: str) -> Scenario:
    """Read and check a scenario file; relative paths in it are relative to the file."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read the scenario: {exc.strerror}") from None
    text = raw.decode("utf-8", errors="replace")
    reader = _Reader(path, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    _unknown(reader, data, _TOP_KEYS, "the scenario")
    base = os.path.dirname(os.path.abspath(path))
    app = data.get("app")
    if app is not None:
        _expect(reader, app, str, "app", "app")
    django = data.get("django_settings")
    if django is not None:
        _expect(reader, django, str, "django_settings", "django_settings")
    workdir = os.path.join(base, _expect(reader, data.get("workdir", "."), str, "workdir",
                                         "workdir"))
    if not os.path.isdir(workdir):
        raise reader.error(f"workdir {workdir!r} is not a folder", "workdir")
    paths = []
    for raw_entry in _expect(reader, data.get("paths", []), list, "paths", "paths"):
        entry = _expect(reader, raw_entry, str, "an entry of paths", "paths")
        full = os.path.join(base, entry)
        if not os.path.isdir(full):
            raise reader.error(f"paths entry {entry!r} is not a folder", "paths")
        paths.append(full)
    env = _expect(reader, data.get("env", {}), dict, "[env]", "env")
    for key, value in env.items():
        _expect(reader, value, str, f"env.{key}", "env", key)
    settings = _expect(reader, data.get("settings", {}), dict, "[settings]", "settings")
    tasks = _expect(reader, data.get("tasks", {}), dict, "[tasks]", "tasks")
    services = _services(reader, _expect(reader, data.get("services", {}), dict, "[services]",
                                         "services"))
    allow = tuple(_endpoint(reader, item, "allow") for item in
                  _expect(reader, data.get("allow", []), list, "allow", "allow"))
    allow_publish = _expect(reader, data.get("allow_publish", False), bool, "allow_publish",
                            "allow_publish")
    bench = _bench(reader, data["bench"]) if "bench" in data else None
    scenario = Scenario(
        path=path, app=app, django_settings=django, workdir=workdir, paths=tuple(paths),
        env=dict(env), settings=dict(settings),
        calls={name: _calls(reader, name, table) for name, table in tasks.items()},
        services=services,
        allow=allow, allow_publish=allow_publish, bench=bench,
        task_lines={name: reader.line_of("tasks", name) for name in tasks},
    )
    names = {service.name for service in services}
    templated = [("env", k, v) for k, v in scenario.env.items()]
    templated += [("settings", k, v) for k, v in scenario.settings.items() if isinstance(v, str)]
    for table, key, value in templated:  # templates must name services of this scenario
        for match in _TEMPLATE.finditer(value):
            if match[1] not in names:
                raise reader.error(f"{table}.{key} uses {{{match[0][1:-1]}}}, but the scenario "
                                   f"has no service {match[1]!r}", table, key)
            if match[2] == "url" and not any(
                    isinstance(s, HttpService) and s.name == match[1] for s in services):
                raise reader.error(f"{table}.{key} uses {{{match[0][1:-1]}}}, but only HTTP "
                                   "services have a url (use .host and .port)", table, key)
    return scenario


def _bench(reader: _Reader, raw: Any) -> BenchBatch:
    table = _expect(reader, raw, dict, "[bench]", "bench")
    _unknown(reader, table, _BENCH_KEYS, "[bench]", "bench")
    if "tasks" not in table:
        raise reader.error("[bench] needs tasks = [...]: the I/O tasks of the batch", "bench")
    tasks = _expect(reader, table["tasks"], list, "bench.tasks", "bench", "tasks")
    if not tasks:
        raise reader.error("bench.tasks is empty: name at least one task", "bench", "tasks")
    for name in tasks:
        _expect(reader, name, str, "an entry of bench.tasks", "bench", "tasks")
    count = _expect(reader, table.get("count", 400), int, "bench.count", "bench", "count")
    if count <= 0:
        raise reader.error(f"bench.count must be above zero, got {count}", "bench", "count")
    cpu_task = table.get("cpu_task")
    if cpu_task is not None:
        _expect(reader, cpu_task, str, "bench.cpu_task", "bench", "cpu_task")
    return BenchBatch(tuple(tasks), count, cpu_task)


def _endpoint(reader: _Reader, text: Any, *names: str) -> tuple[str, int | None]:
    text = _expect(reader, text, str, "an endpoint", *names)
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host or (port and not port.isdigit()):
        raise reader.error(f"{text!r} is not host or host:port", *names)
    return host, int(port) if port else None


def _route(reader: _Reader, raw: Any, where: str, name: str) -> Route:
    table = _expect(reader, raw, dict, f"a route of {where}", name)
    _unknown(reader, table, _ROUTE_KEYS, f"a route of {where}", name)
    return Route(
        method=table.get("method", "GET"), path=table.get("path", "/*"),
        status=table.get("status", 200), json=table.get("json"), body=table.get("body"),
        headers=dict(table.get("headers", {})), latency_ms=table.get("latency_ms", 0),
        jitter_ms=table.get("jitter_ms", 0),
    )


def _services(reader: _Reader, raw: dict[str, Any]) -> tuple[Service, ...]:
    """The [[services.http]], [[services.smtp]] and [[services.proxy]] tables as specs."""
    found: list[Service] = []
    for kind, entries in raw.items():
        if kind not in _SERVICE_KEYS:
            raise reader.error(f"unknown service kind {kind!r} (allowed: "
                               f"{', '.join(sorted(_SERVICE_KEYS))})", "services", kind)
        for entry in _expect(reader, entries, list, f"services.{kind}", "services", kind):
            table = _expect(reader, entry, dict, f"a services.{kind} entry", "services", kind)
            name = _expect(reader, table.get("name"), str, f"the name of a services.{kind}",
                           "services", kind)
            _unknown(reader, table, _SERVICE_KEYS[kind], f"service {name!r}", "name", name)
            try:
                found.append(_service(reader, kind, name, table))
            except (ValueError, TypeError) as exc:
                raise reader.error(str(exc).rstrip("."), "name", name) from None
    try:
        check_services(tuple(found))
    except ValueError as exc:
        raise reader.error(str(exc).rstrip("."), "services") from None
    return tuple(found)


def _service(reader: _Reader, kind: str, name: str, table: dict[str, Any]) -> Service:
    port = table.get("port", 0)
    hosts = tuple(table.get("hosts", ()))
    if kind == "http":
        routes = tuple(_route(reader, r, repr(name), name) for r in table.get("routes", []))
        default = table.get("default")
        extra = {"default": _route(reader, default, repr(name), name)} if default else {}
        for index, route in enumerate(routes):  # a bad route is reported at its own table
            try:
                HttpService(name, (route,))
            except (ValueError, TypeError) as exc:
                line = reader.nth_header("services.http.routes", reader.line_of("name", name),
                                         index)
                where = f"{reader.path}:{line}" if line else reader.path
                raise ScenarioError(f"{where}: {str(exc).rstrip('.')}") from None
        return HttpService(name, routes, tls=table.get("tls", False), hosts=hosts, port=port,
                           **extra)
    if kind == "smtp":
        return SmtpService(name, latency_ms=table.get("latency_ms", 0), hosts=hosts, port=port,
                           starttls=table.get("starttls", False))
    host, target_port = _endpoint(reader, table.get("target"), "name", name, "target")
    if target_port is None:
        raise reader.error(f"service {name!r}: target needs a port (host:port)", "name", name)
    return ProxyService(name, host, target_port, latency_ms=table.get("latency_ms", 0),
                        port=port)
