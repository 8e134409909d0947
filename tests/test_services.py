"""The mock services, driven by real clients over real loopback sockets."""

from __future__ import annotations

import http.client
import json
import os
import re
import smtplib
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from geventcheck.services import (
    HttpService,
    ProxyService,
    Route,
    RunningServices,
    ServiceError,
    SmtpService,
    start_services,
)

from .conftest import require_service

API_ROUTES = (
    Route("GET", "/v1/models", json={"data": ["gpt"]}, headers={"X-Request-Id": "abc"}),
    Route("GET", "/v1/*", json={"prefix": "v1"}),
    Route("GET", "/v1/deep/*", json={"prefix": "deep"}),
    Route("POST", "/v1/chat", status=201, body="created", headers={"Content-Type": "text/x"}),
    Route("get", "/slow", json={"slow": True}, latency_ms=100),
    Route("*", "/any", body="any method"),
)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServices]:
    services = [
        HttpService("api", API_ROUTES),
        HttpService(
            "secure", (Route("GET", "/ok", json={"tls": True}),), tls=True,
            hosts=("api.example.com",),
        ),
        SmtpService("mail", latency_ms=50, starttls=True),
        ProxyService("redis", "127.0.0.1", 6379, latency_ms=20),
    ]
    with start_services(services, tmp_path_factory.mktemp("services")) as running:
        yield running


def get(
    url: str, method: str = "GET", data: bytes | None = None, **kw: Any
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5, **kw) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def logged(running: RunningServices, **match: Any) -> list[dict[str, Any]]:
    return [r for r in running.requests() if all(r.get(k) == v for k, v in match.items())]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone: it can no longer serve)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_routes_match_exactly_by_prefix_and_fall_back_to_default(running: RunningServices) -> None:
    url = running.endpoints["api"].url
    assert get(f"{url}/v1/models")[2] == b'{"data": ["gpt"]}'
    assert json.loads(get(f"{url}/v1/other?x=1")[2]) == {"prefix": "v1"}
    # The longest prefix wins over an earlier, shorter one.
    assert json.loads(get(f"{url}/v1/deep/x")[2]) == {"prefix": "deep"}
    assert get(f"{url}/any", method="DELETE")[2] == b"any method"
    # Right path, wrong method: the default route answers.
    status, headers, body = get(f"{url}/v1/models", method="POST", data=b"{}")
    assert status == 404
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"error": "no mock route matches this request"}
    assert get(f"{url}/nowhere")[0] == 404


def test_json_body_status_and_headers(running: RunningServices) -> None:
    url = running.endpoints["api"].url
    status, headers, body = get(f"{url}/v1/models")
    assert (status, headers["Content-Type"], headers["X-Request-Id"]) == (
        200, "application/json", "abc",
    )
    status, headers, body = get(f"{url}/v1/chat", method="POST", data=b"hello")
    assert (status, body, headers["Content-Type"]) == (201, b"created", "text/x")
    status, headers, body = get(f"{url}/v1/models", method="HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", "17")


def test_route_latency_is_applied(running: RunningServices) -> None:
    url = running.endpoints["api"].url
    started = time.perf_counter()
    assert get(f"{url}/slow")[0] == 200
    assert time.perf_counter() - started >= 0.09
    entry = logged(running, path="/slow")[-1]
    assert entry["duration_ms"] >= 90


def test_request_log_and_keep_alive(running: RunningServices) -> None:
    endpoint = running.endpoints["api"]
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=5)
    try:
        conn.request("GET", "/v1/models?page=2", headers={"Host": "api.openai.com"})
        assert conn.getresponse().read()
        # A chunked body on the same (kept-alive) connection.
        conn.request("POST", "/v1/chat", body=iter([b"ab", b"cde"]), encode_chunked=True)
        assert conn.getresponse().read() == b"created"
        client = f"{conn.sock.getsockname()[0]}:{conn.sock.getsockname()[1]}"
    finally:
        conn.close()
    first, second = logged(running, client=client)
    assert first["service"] == "api" and first["kind"] == "http"
    assert (first["method"], first["path"], first["query"], first["status"]) == (
        "GET", "/v1/models", "page=2", 200,
    )
    assert first["host"] == "api.openai.com" and first["route"] == "GET /v1/models"
    assert (second["method"], second["status"], second["request_bytes"]) == ("POST", 201, 5)
    assert first["time"] <= second["time"] <= time.time()


def test_expect_continue_and_malformed_requests(running: RunningServices) -> None:
    endpoint = running.endpoints["api"]
    with socket.create_connection((endpoint.host, endpoint.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"abc")
        assert sock.recv(1000).startswith(b"HTTP/1.1 201 Created\r\n")
    with socket.create_connection((endpoint.host, endpoint.port), timeout=5) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        reply = sock.recv(1000)
        assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        client = "{}:{}".format(*sock.getsockname())
    (entry,) = logged(running, client=client)
    assert (entry["status"], entry["error"]) == (400, "malformed request line")


def test_https_verifies_with_the_mock_ca(running: RunningServices) -> None:
    endpoint = running.endpoints["secure"]
    assert endpoint.scheme == "https" and endpoint.url == f"https://127.0.0.1:{endpoint.port}"
    assert running.ca_bundle is not None
    assert running.client_env()["SSL_CERT_FILE"] == running.ca_bundle
    context = ssl.create_default_context(cafile=running.ca_bundle)
    status, _, body = get(f"{endpoint.url}/ok", context=context)
    assert (status, json.loads(body)) == (200, {"tls": True})
    # The certificate also covers localhost and the names the mock stands in for.
    for name in ("localhost", "api.example.com"):
        with socket.create_connection((endpoint.host, endpoint.port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert tls.recv(100).startswith(b"HTTP/1.1 200 OK")
    # Without the mock CA, verification fails like it would for a real impostor.
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        get(f"{endpoint.url}/ok", context=ssl.create_default_context())
    assert logged(running, service="secure")[0]["scheme"] == "https"


def test_smtp_records_the_message(running: RunningServices) -> None:
    endpoint = running.endpoints["mail"]
    assert endpoint.url is None and endpoint.scheme == "smtp"
    message = EmailMessage()
    message["From"] = "app@example.com"
    message["To"] = "user@example.org, other@example.org"
    message["Subject"] = "Your report"
    message.set_content("hello")
    assert running.ca_bundle is not None
    with smtplib.SMTP(endpoint.host, endpoint.port, timeout=5) as smtp:
        smtp.starttls(context=ssl.create_default_context(cafile=running.ca_bundle))
        smtp.login("user", "secret")
        started = time.perf_counter()
        smtp.send_message(message)
        assert time.perf_counter() - started >= 0.045
    (entry,) = logged(running, service="mail")
    assert entry["kind"] == "smtp" and entry["status"] == 250
    assert entry["mail_from"] == "app@example.com"
    assert entry["rcpt_tos"] == ["user@example.org", "other@example.org"]
    assert entry["subject"] == "Your report"
    assert entry["tls"] is True and entry["authenticated"] is True


def test_proxy_adds_latency_to_real_redis(running: RunningServices) -> None:
    require_service("redis")
    import redis

    def ping_time(port: int) -> float:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        try:
            client.ping()  # connect outside the measurement
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                assert client.ping()
                best = min(best, time.perf_counter() - started)
            return best
        finally:
            client.close()

    assert ping_time(6379) < 0.010
    assert ping_time(running.endpoints["redis"].port) >= 0.038
    opened = logged(running, service="redis", event="open")
    assert opened and opened[0]["status"] == "ok" and opened[0]["path"] == "127.0.0.1:6379"


def test_template_values(running: RunningServices) -> None:
    values = running.template_values()
    api = running.endpoints["api"]
    assert values["api.url"] == f"http://127.0.0.1:{api.port}"
    assert values["api.host"] == "127.0.0.1" and values["api.port"] == str(api.port)
    assert values["secure.url"].startswith("https://127.0.0.1:")
    assert "mail.url" not in values and values["redis.scheme"] == "tcp"


@pytest.mark.parametrize(
    ("route", "message"),
    [
        (Route("GET", "/x", status=700), "service 'svc', route 'GET /x': status 700 is outside"),
        (Route("GET", "/x", latency_ms=-1), "service 'svc', route 'GET /x': latency_ms -1"),
        (Route("FETCH", "/x"), "service 'svc', route 'FETCH /x': unknown method 'FETCH'"),
        (Route("GET", "x"), "service 'svc', route 'GET x': path must start with '/'"),
        (Route("GET", "/x", json={}, body="b"), "service 'svc', route 'GET /x': give either"),
    ],
)
def test_bad_spec_is_one_clear_sentence(route: Route, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        HttpService("svc", (route,))


def test_bad_service_specs() -> None:
    with pytest.raises(ValueError, match="service 'db': latency_ms -5"):
        ProxyService("db", "127.0.0.1", 5432, latency_ms=-5)
    with pytest.raises(ValueError, match="service 'db': target_port 0"):
        ProxyService("db", "127.0.0.1", 0, latency_ms=1)
    with pytest.raises(ValueError, match=re.escape("name 'a.b'")):
        SmtpService("a.b")
    with pytest.raises(ValueError, match="used twice"):
        RunningServices([SmtpService("a"), SmtpService("a")], ".")


def test_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        services = [HttpService("openai", (), port=port)]
        with pytest.raises(ServiceError) as caught:
            start_services(services, tmp_path)
    assert str(caught.value) == f"service 'openai': port {port} is already in use"
    assert list(tmp_path.iterdir()) == []


def test_nothing_is_left_after_exit(tmp_path: Path) -> None:
    running = start_services([HttpService("api", API_ROUTES)], tmp_path)
    with running:
        pid = running.pid
        assert pid is not None and pid != os.getpid() and alive(pid)
        assert get(f"{running.endpoints['api'].url}/v1/models")[0] == 200
    assert not alive(pid)
    assert list(tmp_path.iterdir()) == []
    # The log outlives the files it was read from.
    assert [r["path"] for r in running.requests()] == ["/v1/models"]


def test_host_stops_when_its_parent_dies(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os
        from geventcheck.services import SmtpService, start_services
        running = start_services([SmtpService("mail")], {str(tmp_path)!r})
        print(running.pid, flush=True)
        os._exit(0)  # no clean-up at all
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=20, check=True
    )
    pid = int(out.stdout)
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(pid)
