"""A minimal HTTP/1.1 server on asyncio streams that answers from a service's routes.

Hand-written so the mock adds no dependency and its behaviour is exact:
request line, headers, a Content-Length or chunked body, keep-alive, and a
delay per route. Everything else a real API does is out of scope.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http
import json
import random
import time
from email.utils import formatdate
from urllib.parse import urlsplit

from ._log import RequestLog, peer
from ._spec import HttpService, Route

MAX_LINE = 65536
MAX_HEADERS = 100
MAX_BODY = 64 * 1024 * 1024


class BadRequest(Exception):
    """The client sent something that is not HTTP/1.x; answered with ``status`` and closed."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclasses.dataclass
class Request:
    method: str
    path: str
    query: str
    version: str
    headers: dict[str, str]
    body: bytes

    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


class HttpServer:
    """Connection handler for one ``HttpService``; pass ``handle`` to ``asyncio.start_server``."""

    def __init__(self, spec: HttpService, log: RequestLog) -> None:
        self.spec = spec
        self.log = log

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = peer(writer.get_extra_info("peername"))
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    request = await read_request(reader, writer)
                except BadRequest as exc:
                    self.log.record(
                        self.spec.name, "http", method=None, path=None, status=exc.status,
                        client=client, error=str(exc),
                    )
                    writer.write(_error_response(exc.status, str(exc)))
                    await writer.drain()
                    return
                if request is None:
                    return
                arrived, started = time.time(), loop.time()
                route = self.spec.route_for(request.method, request.path)
                await asyncio.sleep(_delay_s(route))
                keep_alive = request.keep_alive() and not _route_closes(route)
                # Logged before the reply goes out: a client holding the reply finds it logged.
                self.log.record(
                    self.spec.name, "http", at=arrived,
                    method=request.method, path=request.path, query=request.query,
                    status=route.status, client=client, scheme=self.spec.scheme,
                    host=request.headers.get("host"),
                    route=None if route is self.spec.default else route.label,
                    request_bytes=len(request.body),
                    duration_ms=round((loop.time() - started) * 1000, 3),
                )
                writer.write(render(route, request.method, keep_alive))
                await writer.drain()
                if not keep_alive:
                    return
        except (OSError, asyncio.IncompleteReadError):
            return  # the client went away; nothing to answer
        finally:
            writer.close()


async def read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> Request | None:
    """The next request on the connection, or None when the client closed it cleanly."""
    line = await _readline(reader)
    while line in (b"\r\n", b"\n"):  # tolerated before a request line (RFC 9112 2.2)
        line = await _readline(reader)
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    path, query = _split_target(target)
    headers = await _read_headers(reader)
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
    body = await _read_body(reader, headers)
    return Request(method.upper(), path, query, version, headers, body)


def render(route: Route, method: str, keep_alive: bool) -> bytes:
    """The full response bytes for ``route`` (no body for HEAD, 1xx, 204 and 304)."""
    headers: dict[str, str] = {}
    if route.json is not None:
        body = json.dumps(route.json).encode()
        headers["Content-Type"] = "application/json"
    elif route.body is not None:
        body = route.body.encode()
        headers["Content-Type"] = "text/plain; charset=utf-8"
    else:
        body = b""
    headers.update({
        "Date": formatdate(usegmt=True),
        "Server": "geventcheck-mock",
        "Connection": "keep-alive" if keep_alive else "close",
    })
    # Route headers replace the defaults whatever their spelling.
    custom = {k.lower() for k in route.headers}
    headers = {k: v for k, v in headers.items() if k.lower() not in custom}
    headers.update(route.headers)
    bodiless = route.status < 200 or route.status in (204, 304)
    if not bodiless:
        headers["Content-Length"] = str(len(body))
    if bodiless or method == "HEAD":
        body = b""
    head = f"HTTP/1.1 {route.status} {_phrase(route.status)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + "\r\n").encode("latin-1") + body


def _route_closes(route: Route) -> bool:
    return any(
        k.lower() == "connection" and "close" in v.lower() for k, v in route.headers.items()
    )


def _delay_s(route: Route) -> float:
    jitter = random.uniform(-route.jitter_ms, route.jitter_ms) if route.jitter_ms else 0.0
    return max(0.0, route.latency_ms + jitter) / 1000


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _error_response(status: int, reason: str) -> bytes:
    body = json.dumps({"error": reason}).encode()
    head = (
        f"HTTP/1.1 {status} {_phrase(status)}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


async def _readline(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readline()
    except ValueError:  # longer than the stream limit
        raise BadRequest(431, "request line or header too long") from None
    if line and not line.endswith(b"\n"):
        raise asyncio.IncompleteReadError(line, None)
    return line


def _split_target(target: str) -> tuple[str, str]:
    if target.startswith(("http://", "https://")):  # absolute form, as sent to a proxy
        parts = urlsplit(target)
        return parts.path or "/", parts.query
    if target.startswith("/") or target == "*":
        path, _, query = target.partition("?")
        return path, query
    raise BadRequest(400, f"unsupported request target {target!r}")


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = await _readline(reader)
        if line in (b"\r\n", b"\n"):
            return headers
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, "malformed header line")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    raise BadRequest(431, "too many headers")


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader)
    raw = headers.get("content-length")
    if raw is None:
        return b""
    if not raw.isdigit():
        raise BadRequest(400, f"bad Content-Length {raw!r}")
    length = int(raw)
    if length > MAX_BODY:
        raise BadRequest(413, "request body too large")
    return await reader.readexactly(length)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        size_line = (await _readline(reader)).split(b";")[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise BadRequest(400, "bad chunk size") from None
        if size < 0:
            raise BadRequest(400, "bad chunk size")
        if size == 0:
            break
        total += size
        if total > MAX_BODY:
            raise BadRequest(413, "request body too large")
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)  # the CRLF after each chunk
    while (await _readline(reader)) not in (b"\r\n", b"\n", b""):
        pass  # trailers are read and ignored
    return b"".join(chunks)
