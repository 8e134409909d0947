"""The egress guard, proven where a broken guard cannot reach anything real.

Every scenario runs in a fresh network and mount namespace that only has ``lo``.
The "outside" addresses the scenario tries (93.184.216.34, 8.8.8.8, 10.1.2.3)
are put on ``lo`` and a trap process listens there, and /etc/resolv.conf points
at the trap: whatever gets past the guard lands in the trap's log instead of on
a network. The unguarded phase at the end is the control that shows the trap
does catch connections, datagrams and DNS queries.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from geventcheck.detectors._egress import EgressGuard

OUTSIDE = ("93.184.216.34", "8.8.8.8", "10.1.2.3")

NETNS_SETUP = """
ip link set lo up
for address in {outside}; do ip addr add "$address/32" dev lo; done
mount --bind {resolv} /etc/resolv.conf
"""

# The trap: TCP listeners on every outside port the scenario tries, a DNS server that
# answers NXDOMAIN at once, a loopback HTTP server that echoes the Host header, and a
# sync port that answers only after everything sent before it has been logged.
TRAP = r'''
import json, select, socket, sys

log = open(sys.argv[1], "a", buffering=1)
listeners, datagrams = [], []
for port in (25, 80, 443, 5432):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64); listeners.append(s)
for address in (("8.8.8.8", 53), ("127.0.0.1", 9999)):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(address); datagrams.append(u)
http = socket.socket(); http.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
http.bind(("127.0.0.1", 8080)); http.listen(64)
open(sys.argv[2], "w").close()


def serve_http(conn):
    conn.settimeout(2)
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = conn.recv(4096)
        if not chunk:
            break
        request += chunk
    host = [line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
            if line.lower().startswith(b"host:")]
    body = b"host=" + (host[0] if host else b"")
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    conn.close()


while True:
    ready, _, _ = select.select(listeners + datagrams + [http], [], [])
    sync = None
    for s in ready:
        if s is http:
            conn, _ = http.accept()
            log.write(json.dumps({"proto": "http", "dst": "127.0.0.1:8080"}) + "\n")
            try:
                serve_http(conn)
            except OSError:
                conn.close()
        elif s in listeners:
            conn, _ = s.accept()
            host, port = conn.getsockname()[:2]
            log.write(json.dumps({"proto": "tcp", "dst": f"{host}:{port}"}) + "\n")
            conn.close()
        else:
            data, peer = s.recvfrom(4096)
            host, port = s.getsockname()[:2]
            if port == 9999:
                sync = peer
                continue
            log.write(json.dumps({"proto": "udp", "dst": f"{host}:{port}",
                                  "data": data[:64].decode("latin-1")}) + "\n")
            if len(data) > 12:  # a DNS query: NXDOMAIN, so the resolver does not wait
                end = data.index(b"\0", 12) + 5
                s.sendto(data[:2] + b"\x81\x83" + data[4:6] + b"\0" * 6 + data[12:end], peer)
    if sync is not None:
        datagrams[1].sendto(b"ok", sync)
'''

# The scenario: each network call sits on a line marked `# at:NAME`, so the test can
# check that the guard named exactly that line.
SCENARIO = r'''
import sys

MODE = sys.argv[1]
TRAP_LOG = sys.argv[2]
if MODE == "early":
    from geventcheck.detectors._egress import EgressGuard
    guard = EgressGuard(allowed=[("10.1.2.3", 5432), ("203.0.113.7", 9)],
                        host_map={"api.example.test": "127.0.0.1"})
    guard.activate()
if MODE in ("early", "patched"):
    from gevent import monkey
    monkey.patch_all()

import http.client
import json
import smtplib
import socket
import urllib.error
import urllib.request

if MODE != "early":
    from geventcheck.detectors._egress import EgressGuard
    guard = EgressGuard(allowed=[("10.1.2.3", 5432), ("203.0.113.7", 9)],
                        host_map={"api.example.test": "127.0.0.1"})
    guard.activate()
guard.activate()  # idempotent

results = {"active": guard.active}
OUT_80 = ("93.184.216.34", 80)


def check(name, fn):
    try:
        value = fn()
        outcome = {"outcome": "ok", "value": value if isinstance(value, str | int) else None}
    except Exception as raised:
        exc, seen = raised, [raised]
        while not isinstance(exc, PermissionError):  # urllib, requests wrap the socket error
            inner = getattr(exc, "reason", None) or exc.__cause__ or exc.__context__
            if not isinstance(inner, BaseException) or inner in seen:
                exc = raised
                break
            exc = inner
            seen.append(exc)
        outcome = {"outcome": type(exc).__name__, "errno": getattr(exc, "errno", None),
                   "message": str(exc), "raised": type(raised).__name__}
    outcome["attempts"] = [
        {"host": a.host, "port": a.port, "kind": a.kind, "file": a.file, "line": a.line,
         "function": a.function, "stack": list(a.stack)}
        for a in guard.take_attempts()
    ]
    results[name] = outcome


def trap_log():
    sync = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sync.settimeout(5)
    sync.sendto(b"sync", ("127.0.0.1", 9999))
    sync.recvfrom(16)
    sync.close()
    with open(TRAP_LOG) as f:
        return [json.loads(line) for line in f]


def tcp(host, port):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, port))  # at:connect
    finally:
        s.close()


def tcp_ex(host, port):
    s = socket.socket()
    s.settimeout(2)
    try:
        return s.connect_ex((host, port))  # at:connect_ex
    finally:
        s.close()


def udp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"hello", (host, port))  # at:sendto
    finally:
        s.close()


def udp_sendmsg(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendmsg([b"hello"], [], 0, (host, port))  # at:sendmsg
    finally:
        s.close()


def fetch(url):
    with urllib.request.urlopen(url, timeout=2) as response:  # at:urlopen
        return response.read().decode()


def http_client(host, port):
    conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", "/")  # at:http_client
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def smtp(host):
    smtplib.SMTP(host, 25, timeout=2)  # at:smtp


def requests_get(url):
    import requests

    return requests.get(url, timeout=2).text  # at:requests


# Refused, recorded, nothing sent.
check("connect", lambda: tcp("93.184.216.34", 80))
check("connect_ex", lambda: tcp_ex("93.184.216.34", 443))
check("connect_name", lambda: tcp("example.com", 80))
check("create_connection", lambda: socket.create_connection(OUT_80, 2))  # at:create_connection
check("sendto", lambda: udp("8.8.8.8", 53))
check("sendto_name", lambda: udp("example.com", 53))
check("sendmsg", lambda: udp_sendmsg("8.8.8.8", 53))
check("getaddrinfo", lambda: socket.getaddrinfo("example.com", 443))  # at:getaddrinfo
check("gethostbyname", lambda: socket.gethostbyname("example.com"))  # at:gethostbyname
check("gethostbyaddr", lambda: socket.gethostbyaddr("93.184.216.34"))  # at:gethostbyaddr
check("urlopen", lambda: fetch("http://example.com/"))
check("urlopen_ip", lambda: fetch("http://93.184.216.34/"))
check("http_client", lambda: http_client("93.184.216.34", 443))
check("smtp_name", lambda: smtp("smtp.example.com"))
check("smtp_ip", lambda: smtp("93.184.216.34"))
try:
    import requests  # noqa: F401
except ImportError:
    results["requests"] = {"outcome": "not-installed", "attempts": []}
else:
    check("requests", lambda: requests_get("https://example.com/"))
# Not refused: loopback, the allowed endpoints, a mapped name, a literal address parsed.
check("loopback", lambda: fetch("http://127.0.0.1:8080/"))
check("localhost", lambda: http_client("localhost", 8080))
check("allowed", lambda: tcp("10.1.2.3", 5432))
check("allowed_unrouted", lambda: tcp("203.0.113.7", 9))
check("host_map", lambda: fetch("http://api.example.test:8080/"))
check("host_map_raw", lambda: tcp("api.example.test", 8080))
check("literal_lookup", lambda: socket.getaddrinfo("93.184.216.34", 80)[0][4][0])
results["trap_guarded"] = trap_log()

# The control: with the guard off, the same calls leave the process and the trap sees them.
guard.deactivate()
guard.deactivate()
check("off_connect", lambda: tcp("93.184.216.34", 80))
check("off_sendto", lambda: udp("8.8.8.8", 53))
check("off_unrouted", lambda: tcp("203.0.113.9", 80))
check("off_lookup", lambda: socket.getaddrinfo("leak.example", 443))
results["trap_all"] = trap_log()
results["active_after"] = guard.active
print("RESULT:" + json.dumps(results))
'''

REFUSED: dict[str, tuple[str, str, int | None, str]] = {
    # name: (kind, host, port, the marker of the line that must be named)
    "connect": ("connect", "93.184.216.34", 80, "connect"),
    "connect_ex": ("connect", "93.184.216.34", 443, "connect_ex"),
    "connect_name": ("connect", "example.com", 80, "connect"),
    "create_connection": ("connect", "93.184.216.34", 80, "create_connection"),
    "sendto": ("sendto", "8.8.8.8", 53, "sendto"),
    "sendto_name": ("sendto", "example.com", 53, "sendto"),
    "sendmsg": ("sendto", "8.8.8.8", 53, "sendmsg"),
    "getaddrinfo": ("lookup", "example.com", 443, "getaddrinfo"),
    "gethostbyname": ("lookup", "example.com", None, "gethostbyname"),
    "gethostbyaddr": ("lookup", "93.184.216.34", None, "gethostbyaddr"),
    "urlopen": ("lookup", "example.com", 80, "urlopen"),
    "urlopen_ip": ("connect", "93.184.216.34", 80, "urlopen"),
    "http_client": ("connect", "93.184.216.34", 443, "http_client"),
    "smtp_name": ("lookup", "smtp.example.com", 25, "smtp"),
    "smtp_ip": ("connect", "93.184.216.34", 25, "smtp"),
    "requests": ("lookup", "example.com", 443, "requests"),
}
MODES = ("plain", "patched", "early")


def _skip_or_fail(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _netns_command(tmp: Path, body: str) -> list[str]:
    resolv = tmp / "resolv.conf"
    resolv.write_text("nameserver 8.8.8.8\noptions timeout:1 attempts:1\n")
    setup = NETNS_SETUP.format(outside=" ".join(OUTSIDE), resolv=resolv)
    return ["unshare", "--net", "--mount", "--", "sh", "-ec", setup + body]


@pytest.fixture(scope="module")
def netns_ok(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip (fail under CI) when this machine cannot make a private network namespace."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        _skip_or_fail("egress tests need unshare (util-linux) and ip (iproute2)")
    tmp = tmp_path_factory.mktemp("netns")
    cmd = _netns_command(tmp, "ip -o addr show dev lo")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0 or "93.184.216.34" not in proc.stdout:
        _skip_or_fail(
            "egress tests need a private network and mount namespace "
            f"(`unshare --net --mount` as root) and failed to make one: {proc.stderr.strip()}"
        )


@pytest.fixture(scope="module")
def outcomes(netns_ok: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each mode's scenario, run once in its own namespace, with the trap beside it."""
    tmp = tmp_path_factory.mktemp("egress")
    scenario = tmp / "scenario.py"
    scenario.write_text(textwrap.dedent(SCENARIO))
    (tmp / "trap.py").write_text(TRAP)
    results: dict[str, Any] = {"_scenario": scenario}
    for mode in MODES:
        log, ready = tmp / f"trap-{mode}.log", tmp / f"ready-{mode}"
        body = f"""
{sys.executable} {tmp / "trap.py"} {log} {ready} >{tmp / f"trap-{mode}.err"} 2>&1 &
trap_pid=$!
for _ in $(seq 100); do [ -e {ready} ] && break; sleep 0.05; done
set +e
{sys.executable} {scenario} {mode} {log}
rc=$?
kill $trap_pid
exit $rc
"""
        proc = subprocess.run(_netns_command(tmp, body), capture_output=True, text=True,
                              timeout=60)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT:")]
        assert proc.returncode == 0 and lines, (mode, proc.stdout, proc.stderr)
        results[mode] = json.loads(lines[0].removeprefix("RESULT:"))
    return results


def _line_of(scenario: Path, marker: str) -> int:
    for number, text in enumerate(scenario.read_text().splitlines(), start=1):
        if text.rstrip().endswith(f"# at:{marker}"):
            return number
    raise AssertionError(marker)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_before_sending_and_recorded_at_the_apps_line(
    outcomes: dict[str, Any], mode: str, name: str
) -> None:
    result = outcomes[mode][name]
    if result["outcome"] == "not-installed":
        pytest.skip(f"{name} is not installed")
    kind, host, port, marker = REFUSED[name]
    assert result["outcome"] == "PermissionError", result
    assert "geventcheck egress guard" in result["message"]
    attempt = result["attempts"][0]
    assert (attempt["kind"], attempt["host"], attempt["port"]) == (kind, host, port), attempt
    scenario = outcomes["_scenario"]
    assert (attempt["file"], attempt["line"]) == (str(scenario), _line_of(scenario, marker)), \
        attempt["stack"]
    assert attempt["stack"], attempt


@pytest.mark.parametrize("mode", MODES)
def test_nothing_reached_the_outside_while_guarded(outcomes: dict[str, Any], mode: str) -> None:
    seen = {(e["proto"], e["dst"]) for e in outcomes[mode]["trap_guarded"]}
    # Only what the guard allows: the loopback server and the allowed endpoint.
    assert seen == {("http", "127.0.0.1:8080"), ("tcp", "10.1.2.3:5432")}, seen


@pytest.mark.parametrize("mode", MODES)
def test_loopback_allowed_and_mapped_hosts_pass(outcomes: dict[str, Any], mode: str) -> None:
    result = outcomes[mode]
    assert result["loopback"]["outcome"] == "ok", result["loopback"]
    assert result["localhost"]["outcome"] == "ok", result["localhost"]
    assert result["allowed"]["outcome"] == "ok", result["allowed"]
    # Allowed but unrouted in the namespace: the kernel, not the guard, says no.
    assert result["allowed_unrouted"]["outcome"] == "OSError", result["allowed_unrouted"]
    assert result["allowed_unrouted"]["errno"] == 101  # ENETUNREACH
    # A mapped name reaches the loopback server, which still sees the name asked for.
    assert result["host_map"] == {
        "outcome": "ok", "value": "host=api.example.test:8080", "attempts": []}
    assert result["literal_lookup"]["value"] == "93.184.216.34"
    assert result["host_map_raw"]["outcome"] == "ok", result["host_map_raw"]
    for name in ("loopback", "localhost", "allowed", "allowed_unrouted", "literal_lookup",
                 "host_map_raw"):
        assert result[name]["attempts"] == [], (name, result[name])


@pytest.mark.parametrize("mode", MODES)
def test_deactivated_guard_lets_traffic_through(outcomes: dict[str, Any], mode: str) -> None:
    result = outcomes[mode]
    assert result["off_connect"]["outcome"] == "ok", result["off_connect"]
    assert result["off_sendto"]["outcome"] == "ok", result["off_sendto"]
    assert (result["off_unrouted"]["outcome"], result["off_unrouted"]["errno"]) == ("OSError", 101)
    assert result["off_lookup"]["outcome"] == "gaierror", result["off_lookup"]
    for name in ("off_connect", "off_sendto", "off_unrouted", "off_lookup"):
        assert result[name]["attempts"] == []
    assert (result["active"], result["active_after"]) == (True, False)
    # The control: the trap catches a connection, a datagram and a DNS query when let through.
    later = result["trap_all"][len(result["trap_guarded"]):]
    assert {"proto": "tcp", "dst": "93.184.216.34:80"} in later
    assert any(e["dst"] == "8.8.8.8:53" and e["data"] == "hello" for e in later), later
    assert any(e["dst"] == "8.8.8.8:53" and "leak" in e["data"] for e in later), later


# -- in-process: the policy alone; no guard is activated in the test process -------------------


def test_policy_without_traffic() -> None:
    guard = EgressGuard(allowed=[("10.1.2.3", 5432), ("DB.internal", None)],
                        allowed_hosts=["cache.internal"],
                        host_map={"API.example.test": "127.0.0.1"})
    assert guard.connect_allowed("127.0.0.9", 1)
    assert guard.connect_allowed("::1", 1)
    assert guard.connect_allowed("::ffff:127.0.0.1", 1)
    assert guard.connect_allowed("10.1.2.3", 5432)
    assert not guard.connect_allowed("10.1.2.3", 5433)
    assert not guard.connect_allowed("93.184.216.34", 443)
    assert guard.lookup_allowed("localhost")
    assert guard.lookup_allowed("db.internal") and guard.lookup_allowed("cache.internal")
    assert guard.lookup_allowed("api.example.test")
    assert guard.mapped("api.EXAMPLE.test") == "127.0.0.1"
    assert not guard.lookup_allowed("example.com")
    assert guard.lookup_allowed("93.184.216.34")  # only parsed
    assert not guard.lookup_allowed("93.184.216.34", reverse=True)
    guard.learn("db.internal", ["10.9.9.9"])
    assert guard.connect_allowed("10.9.9.9", 1234)
