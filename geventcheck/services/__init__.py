"""Mock external services that an audited task reaches with its real client code.

HTTP(S) APIs, a mail server and latency proxies in front of real databases
all run in one separate process on loopback sockets, so a task that blocks
its own interpreter cannot freeze them, and every request is logged::

    with start_services([HttpService("openai", routes)], workdir) as running:
        url = running.endpoints["openai"].url
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ._config import HostConfig
from ._log import read_log
from ._process import HostProcess, ServiceError
from ._spec import HttpService, ProxyService, Route, Service, SmtpService

__all__ = [
    "Endpoint",
    "HttpService",
    "ProxyService",
    "Route",
    "RunningServices",
    "Service",
    "ServiceError",
    "SmtpService",
    "check_services",
    "start_services",
]

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where a running mock listens; ``url`` is None for SMTP and TCP proxies."""

    name: str
    scheme: str  # http, https, smtp or tcp
    host: str
    port: int
    url: str | None


class RunningServices:
    """The mocks of one run; a context manager that leaves no process or file behind."""

    def __init__(
        self,
        services: Sequence[Service],
        workdir: str | os.PathLike[str],
        *,
        log_path: str | os.PathLike[str] | None = None,
        timeout: float = START_TIMEOUT_S,
    ) -> None:
        self.services = tuple(services)
        check_services(self.services)
        self.workdir = Path(workdir)
        self.timeout = timeout
        self._keep_log = log_path is not None
        self.log_path: Path | None = Path(log_path) if log_path is not None else None
        self.endpoints: dict[str, Endpoint] = {}
        self.ca_bundle: str | None = None
        self._tmp: Path | None = None
        self._host: HostProcess | None = None
        self._final_log: list[dict[str, Any]] | None = None

    @property
    def pid(self) -> int | None:
        """The host process id while it runs (for diagnostics and tests)."""
        return self._host.pid if self._host else None

    def start(self) -> None:
        """Start every service and wait until all accept connections; ServiceError if not."""
        if self._tmp is not None or not self.services:
            return
        if not self.workdir.is_dir():
            raise ServiceError(f"the work directory {str(self.workdir)!r} does not exist")
        self._tmp = Path(tempfile.mkdtemp(prefix="geventcheck-services-", dir=self.workdir))
        try:
            self._start_host(self._tmp)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the host, keep the final log in memory, remove every temporary file."""
        if self._host is not None:
            self._host.stop()
            self._host = None
        if self._tmp is not None:
            if self.log_path is not None:
                self._final_log = read_log(self.log_path)
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            if not self._keep_log:
                self.log_path = None
            self.ca_bundle = None

    def requests(self) -> list[dict[str, Any]]:
        """Every logged request, message and connection so far, oldest first."""
        if self._final_log is not None and self._tmp is None:
            return list(self._final_log)
        return read_log(self.log_path) if self.log_path is not None else []

    def template_values(self) -> dict[str, str]:
        """``{name}.host``, ``.port``, ``.scheme`` and (for HTTP) ``.url`` of each service."""
        values: dict[str, str] = {}
        for name, endpoint in self.endpoints.items():
            values[f"{name}.host"] = endpoint.host
            values[f"{name}.port"] = str(endpoint.port)
            values[f"{name}.scheme"] = endpoint.scheme
            if endpoint.url is not None:
                values[f"{name}.url"] = endpoint.url
        return values

    def client_env(self) -> dict[str, str]:
        """Environment that makes Python, requests and curl trust the mock CA (only it)."""
        if self.ca_bundle is None:
            return {}
        return {name: self.ca_bundle for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")}

    def __enter__(self) -> RunningServices:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_host(self, tmp: Path) -> None:
        cert_path = None
        if any(_wants_tls(s) for s in self.services):
            from ._tls import make_tls_files

            hosts = [h for s in self.services if not isinstance(s, ProxyService) for h in s.hosts]
            tls = make_tls_files(tmp, hosts)
            self.ca_bundle = str(tls.ca_bundle)
            cert_path = str(tls.server_pem)
        if self.log_path is None:
            self.log_path = tmp / "requests.jsonl"
        self.log_path.write_text("", encoding="utf-8")
        config = HostConfig(self.services, str(self.log_path.resolve()), cert_path)
        config_path = tmp / "config.json"
        config_path.write_text(config.dumps(), encoding="utf-8")
        self._host = HostProcess(config_path, tmp / "host.stderr")
        ports = self._host.start(self.timeout)
        self.endpoints = {s.name: _endpoint(s, ports[s.name]) for s in self.services}


def start_services(
    services: Sequence[Service],
    workdir: str | os.PathLike[str],
    *,
    log_path: str | os.PathLike[str] | None = None,
    timeout: float = START_TIMEOUT_S,
) -> RunningServices:
    """Start ``services`` now; use the result in a ``with`` block so they stop for sure.

    ``log_path``, when given, receives the request log and is kept afterwards;
    otherwise the log lives in a temporary directory under ``workdir``.
    """
    running = RunningServices(services, workdir, log_path=log_path, timeout=timeout)
    running.start()
    return running


def _wants_tls(service: Service) -> bool:
    return (isinstance(service, HttpService) and service.tls) or (
        isinstance(service, SmtpService) and service.starttls
    )


def _endpoint(service: Service, port: int) -> Endpoint:
    url = f"{service.scheme}://{HOST}:{port}" if isinstance(service, HttpService) else None
    return Endpoint(service.name, service.scheme, HOST, port, url)


def check_services(services: tuple[Service, ...]) -> None:
    """Names must be unique (they key templates) and a host name may stand for one mock."""
    names: set[str] = set()
    owner: dict[str, str] = {}
    for service in services:
        if not isinstance(service, HttpService | SmtpService | ProxyService):
            raise ValueError(f"{service!r} is not an HttpService, SmtpService or ProxyService.")
        if service.name in names:
            raise ValueError(f"service name {service.name!r} is used twice; names must be unique.")
        names.add(service.name)
        for host in getattr(service, "hosts", ()):
            if host.lower() in owner:
                raise ValueError(
                    f"host {host!r} is claimed by both service {owner[host.lower()]!r} "
                    f"and service {service.name!r}."
                )
            owner[host.lower()] = service.name
