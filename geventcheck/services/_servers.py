"""Start every mock server on one asyncio loop, on 127.0.0.1, and report the bound ports.

Runs inside the host process only. A port that cannot be bound becomes a
``BindError`` whose text is the one line the user sees.
"""

from __future__ import annotations

import asyncio
import errno
import ssl

from ._config import HostConfig
from ._http import MAX_LINE, HttpServer
from ._log import RequestLog
from ._proxy import LatencyProxy
from ._spec import HttpService, ProxyService, Service
from ._tls import server_context

HOST = "127.0.0.1"


class BindError(Exception):
    """A server could not listen; the message names the service and the port."""


async def start_all(
    config: HostConfig, log: RequestLog
) -> tuple[list[asyncio.Server], dict[str, int]]:
    """Listening servers (already accepting connections) and each service's port."""
    tls = server_context(config.cert_path) if config.cert_path else None
    servers: list[asyncio.Server] = []
    ports: dict[str, int] = {}
    try:
        for spec in config.services:
            try:
                server = await _start_one(spec, log, tls)
            except OSError as exc:
                raise BindError(_bind_message(spec, exc)) from None
            servers.append(server)
            ports[spec.name] = _port_of(server)
    except BaseException:
        for server in servers:
            server.close()
        raise
    return servers, ports


async def _start_one(
    spec: Service, log: RequestLog, tls: ssl.SSLContext | None
) -> asyncio.Server:
    if isinstance(spec, HttpService):
        if spec.tls and tls is None:
            raise BindError(f"service {spec.name!r}: TLS requested but no certificate was made")
        return await asyncio.start_server(
            HttpServer(spec, log).handle, HOST, spec.port,
            ssl=tls if spec.tls else None, limit=MAX_LINE,
        )
    if isinstance(spec, ProxyService):
        return await asyncio.start_server(LatencyProxy(spec, log).handle, HOST, spec.port)
    from ._smtp import smtp_factory  # aiosmtpd is only loaded when a mail server is wanted

    loop = asyncio.get_running_loop()
    return await loop.create_server(smtp_factory(spec, log, tls), HOST, spec.port)


def _port_of(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


def _bind_message(spec: Service, exc: OSError) -> str:
    where = f"service {spec.name!r}"
    if exc.errno == errno.EADDRINUSE:
        return f"{where}: port {spec.port} is already in use"
    if exc.errno == errno.EACCES:
        return f"{where}: port {spec.port} needs privileges (pick one above 1023, or 0)"
    return f"{where}: cannot listen on {HOST}:{spec.port}: {exc.strerror or exc}"
