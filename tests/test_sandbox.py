"""The --sandbox namespace on its own: what is bridged answers, nothing else is reachable.

The namespace is made by the code under test (``unshare(CLONE_NEWNET)``), so a process
started in it that reaches for 192.0.2.1 cannot send a packet anywhere: the namespace
has only ``lo``.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from geventcheck.runner._sandbox import Sandbox, SandboxError, declare

CLIENT = r'''
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"ping")
        print("answer", sock.recv(16).decode())
except OSError as exc:
    print("error", exc.errno)
'''


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    try:
        box = Sandbox(str(tmp_path))
    except SandboxError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    try:
        yield box
    finally:
        box.close()


@pytest.fixture
def echo() -> Iterator[int]:
    """A server on this machine's loopback, outside the namespace: answers 'pong'."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(16)
                conn.sendall(b"pong")

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def _client(box: Sandbox, host: str, port: int) -> str:
    proc = box.popen([sys.executable, "-c", CLIENT, host, str(port)],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return str(out.decode().strip())


def test_a_bridged_endpoint_answers_inside(sandbox: Sandbox, echo: int) -> None:
    assert _client(sandbox, "127.0.0.1", echo) == f"error {errno.ECONNREFUSED}"  # not yet
    assert sandbox.bridge("127.0.0.1", echo) == ["127.0.0.1"]
    assert _client(sandbox, "127.0.0.1", echo) == "answer pong"


OUTSIDE = r'''
import socket, subprocess, sys, tempfile, threading
from geventcheck.runner._sandbox import Sandbox

client = sys.argv[1]
trap = socket.socket()
trap.bind(("192.0.2.1", 80))
trap.listen(8)

def serve():
    while True:
        try:
            conn, _ = trap.accept()
        except OSError:
            return
        with conn:
            conn.recv(16)
            conn.sendall(b"trap")

threading.Thread(target=serve, daemon=True).start()
args = [sys.executable, "-c", client, "192.0.2.1", "80"]
# control: outside the sandbox the trap answers, so a sandbox that leaks would reach it
print(subprocess.run(args, capture_output=True, text=True).stdout.strip())
box = Sandbox(tempfile.mkdtemp())
try:
    proc = box.popen(args, stdout=subprocess.PIPE)
    print(proc.communicate(timeout=30)[0].decode().strip())
finally:
    box.close()
'''


def test_an_outside_address_is_unreachable_inside(sandbox: Sandbox) -> None:
    """Run in a namespace of the test's own where 192.0.2.1 is a trap on its loopback: a
    sandbox that leaked would reach the trap, and no packet can leave the machine."""
    import shutil

    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare (util-linux) and ip (iproute2)")
    body = ("ip link set lo up && ip addr add 192.0.2.1/32 dev lo && "
            f'exec "{sys.executable}" -c "$0" "$1"')
    proc = subprocess.run(["unshare", "--net", "--", "sh", "-ec", body, OUTSIDE, CLIENT],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    control, inside = proc.stdout.splitlines()[-2:]
    assert control == "answer trap"
    assert inside == f"error {errno.ENETUNREACH}"


def test_declarations_are_bridged_until_the_first_task_starts(sandbox: Sandbox,
                                                               echo: int) -> None:
    assert declare(sandbox.control_path, [("localhost", echo)]) == {"localhost": "127.0.0.1"}
    assert _client(sandbox, "127.0.0.1", echo) == "answer pong"
    sandbox.close_declarations()
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen(1)
    try:
        port = other.getsockname()[1]
        assert declare(sandbox.control_path, [("127.0.0.1", port)]) == {}
        assert ("127.0.0.1", port) not in sandbox.bridges
        assert _client(sandbox, "127.0.0.1", port) == f"error {errno.ECONNREFUSED}"
    finally:
        other.close()


def test_without_the_privilege_it_is_one_line_and_exit_2() -> None:
    import shutil

    from .conftest import APPS

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to run the audit as nobody")
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
         "geventcheck", "audit", "-A", "statebugs", "--sandbox"],
        cwd=APPS, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    [line] = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert line.startswith("geventcheck: error: --sandbox could not make a network namespace")
    assert "root or CAP_SYS_ADMIN" in line
