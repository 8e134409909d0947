"""What a mocked service looks like: plain frozen dataclasses, checked on creation.

A scenario file is turned into these; a mistake in it must stop the run with
one sentence that names the service and the route, not a traceback from the
server process later.
"""

from __future__ import annotations

import dataclasses
import json as jsonlib
import math
import re
from typing import Any

METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "*"}
)
# The server computes these itself; a route that sets them would corrupt the framing.
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_HOST = re.compile(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclasses.dataclass(frozen=True)
class Route:
    """One canned answer; ``path`` ending in ``*`` matches as a prefix.

    ``method`` ``"*"`` matches any method. The reply waits ``latency_ms`` plus a
    uniform random ``±jitter_ms`` (never below zero) before it is sent.
    """

    method: str
    path: str
    status: int = 200
    json: Any = None
    body: str | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    latency_ms: float = 0
    jitter_ms: float = 0

    def __post_init__(self) -> None:
        # Scenario files may spell methods in lower case; matching is on the upper form.
        if isinstance(self.method, str):
            object.__setattr__(self, "method", self.method.upper())

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"

    def matches_path(self, path: str) -> bool:
        if self.path.endswith("*"):
            return path.startswith(self.path[:-1])
        return path == self.path


def _default_route() -> Route:
    return Route("*", "/*", status=404, json={"error": "no mock route matches this request"})


@dataclasses.dataclass(frozen=True)
class HttpService:
    """An HTTP (or HTTPS, with ``tls``) API; ``hosts`` are names that should reach it."""

    name: str
    routes: tuple[Route, ...]
    default: Route = dataclasses.field(default_factory=_default_route)
    tls: bool = False
    hosts: tuple[str, ...] = ()
    port: int = 0

    def __post_init__(self) -> None:
        _tuples(self, "routes", "hosts")  # a loader may hand over lists
        _check_common("HTTP", self.name, self.port)
        _check_hosts(self.name, self.hosts)
        if not isinstance(self.routes, tuple):
            raise ValueError(f"service {self.name!r}: routes must be a tuple of Route.")
        for route in self.routes:
            _check_route(self.name, route, "route")
        _check_route(self.name, self.default, "default route")

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def route_for(self, method: str, path: str) -> Route:
        """Exact paths win over prefixes, the longest prefix wins, then file order.

        HEAD falls back to the GET routes, as it does on a real server.
        """
        method = method.upper()
        route = self._match(method, path)
        if route is None and method == "HEAD":
            route = self._match("GET", path)
        return self.default if route is None else route

    def _match(self, method: str, path: str) -> Route | None:
        candidates = [
            r for r in self.routes if r.method in ("*", method) and r.matches_path(path)
        ]
        exact = [r for r in candidates if not r.path.endswith("*")]
        if exact:
            return exact[0]
        if candidates:
            return max(candidates, key=lambda r: len(r.path))  # max keeps the first of ties
        return None


@dataclasses.dataclass(frozen=True)
class SmtpService:
    """A mail server that accepts and records every message (any AUTH succeeds)."""

    name: str
    latency_ms: float = 0
    starttls: bool = False
    hosts: tuple[str, ...] = ()
    port: int = 0

    def __post_init__(self) -> None:
        _tuples(self, "hosts")
        _check_common("SMTP", self.name, self.port)
        _check_hosts(self.name, self.hosts)
        _check_latency(f"service {self.name!r}", "latency_ms", self.latency_ms)

    @property
    def scheme(self) -> str:
        return "smtp"


@dataclasses.dataclass(frozen=True)
class ProxyService:
    """A TCP relay to a real server that delays every chunk by ``latency_ms``.

    Each request/response round trip therefore costs about twice the latency.
    """

    name: str
    target_host: str
    target_port: int
    latency_ms: float
    port: int = 0

    def __post_init__(self) -> None:
        _check_common("proxy", self.name, self.port)
        where = f"service {self.name!r}"
        if not isinstance(self.target_host, str) or not self.target_host:
            raise ValueError(f"{where}: target_host must be a non-empty host name or address.")
        if (
            not isinstance(self.target_port, int)
            or isinstance(self.target_port, bool)
            or not 1 <= self.target_port <= 65535
        ):
            raise ValueError(
                f"{where}: target_port {self.target_port!r} is not a port number (1-65535)."
            )
        _check_latency(where, "latency_ms", self.latency_ms)

    @property
    def scheme(self) -> str:
        return "tcp"


Service = HttpService | SmtpService | ProxyService


def _tuples(spec: object, *fields: str) -> None:
    for field in fields:
        value = getattr(spec, field)
        if isinstance(value, list):
            object.__setattr__(spec, field, tuple(value))


def _check_common(kind: str, name: str, port: int) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"{kind} service name {name!r} must start with a letter or '_' and hold only "
            "letters, digits, '_' and '-' (it is used in templates such as {name.url})."
        )
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(
            f"service {name!r}: port {port!r} is not a port number (0-65535, 0 = any free port)."
        )


def _check_hosts(name: str, hosts: tuple[str, ...]) -> None:
    if not isinstance(hosts, tuple):
        raise ValueError(f"service {name!r}: hosts must be a tuple of host names.")
    for host in hosts:
        if not isinstance(host, str) or not _HOST.fullmatch(host):
            raise ValueError(f"service {name!r}: {host!r} is not a valid host name.")


def _check_latency(where: str, field: str, value: float) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{where}: {field} {value!r} must be a finite number of ms >= 0.")


def _check_route(service: str, route: Route, kind: str) -> None:
    if not isinstance(route, Route):
        raise ValueError(f"service {service!r}: {route!r} is not a Route.")
    where = f"service {service!r}, {kind} {route.label!r}"
    if route.method not in METHODS:
        known = ", ".join(sorted(METHODS))
        raise ValueError(f"{where}: unknown method {route.method!r} (expected one of {known}).")
    if not isinstance(route.path, str) or not route.path.startswith("/"):
        raise ValueError(f"{where}: path must start with '/'.")
    if "*" in route.path[:-1]:
        raise ValueError(f"{where}: '*' is only allowed at the end of the path.")
    if (
        not isinstance(route.status, int)
        or isinstance(route.status, bool)
        or not 100 <= route.status <= 599
    ):
        raise ValueError(f"{where}: status {route.status!r} is outside 100-599.")
    _check_latency(where, "latency_ms", route.latency_ms)
    _check_latency(where, "jitter_ms", route.jitter_ms)
    if route.json is not None and route.body is not None:
        raise ValueError(f"{where}: give either json or body, not both.")
    if route.body is not None and not isinstance(route.body, str):
        raise ValueError(f"{where}: body must be a string.")
    if route.json is not None:
        try:
            jsonlib.dumps(route.json, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: json cannot be encoded as JSON ({exc}).") from None
    if not isinstance(route.headers, dict):
        raise ValueError(f"{where}: headers must be a table of name = value strings.")
    for key, value in route.headers.items():
        if not isinstance(key, str) or not _TOKEN.fullmatch(key):
            raise ValueError(f"{where}: {key!r} is not a valid header name.")
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise ValueError(f"{where}: header {key!r} must be a one-line string.")
        if key.lower() in FRAMING_HEADERS:
            raise ValueError(f"{where}: header {key!r} is set by the server; remove it.")
