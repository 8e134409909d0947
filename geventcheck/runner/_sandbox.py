"""``--sandbox``: the audited process tree in a network namespace of its own (Linux, root).

The egress guard lives in Python: a shell command, a compiled program or a Python
child started with a scrubbed environment gets past it. In the sandbox the audited
child and everything it starts see one interface, ``lo``, and nothing else: a
connection to any other address fails in the kernel (no route), before a packet
exists. What the audit allows is bridged in, TCP only: for each allowed endpoint a
listener inside the namespace on the same address and port, whose connections the
parent (outside, in the machine's own namespace) relays to the real endpoint.

Bridged: the scenario's fake services, ``allow`` entries that name a port, and the
app's broker, result backend and databases, which the audited process declares on a
control socket once the app is loaded, before any task runs (declarations close when
the first task starts, so a task cannot open a bridge). A named endpoint is resolved
outside; the audited process then maps the name to that address.

The namespace is made with ``unshare(CLONE_NEWNET)`` in a helper thread, and each
audited child is started from a thread that entered it with ``setns``: namespaces are
per thread, so the parent itself never leaves the machine's network.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import ipaddress
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS = 0x8913, 0x8914
_IFF_UP = 0x1
_BUFFER = 65536


class SandboxError(Exception):
    """The namespace could not be made (not Linux, not root): one line for the user."""


def _libc_call(name: str, *args: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{name}: {os.strerror(code)}")


def _in_thread(work: Callable[[], T]) -> T:
    """Run ``work`` in a fresh thread: a thread that changes namespace must be thrown away."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = work()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, name="geventcheck-sandbox", daemon=True)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]  # type: ignore[no-any-return]


def _loopback_up() -> None:
    """``ip link set lo up``, with an ioctl: a new namespace's lo starts down."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | _IFF_UP, b""))


def _is_loopback(host: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


class Sandbox:
    """A network namespace, the bridges into it, and the control socket for declarations."""

    def __init__(self, workdir: str) -> None:
        if not sys.platform.startswith("linux"):
            raise SandboxError("--sandbox needs Linux (network namespaces)")
        try:
            self._ns = _in_thread(self._make_namespace)
        except OSError as exc:
            raise SandboxError(f"--sandbox could not make a network namespace ({exc}); it "
                               "needs root or CAP_SYS_ADMIN") from exc
        self.bridges: dict[tuple[str, int], socket.socket] = {}
        self._lock = threading.Lock()
        self._declaring = True
        self._closed = False
        self.control_path = os.path.join(workdir, "sandbox.sock")
        self._control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._control.bind(self.control_path)
        self._control.listen(16)
        self._spawn(self._serve_control, self._control)

    @staticmethod
    def _make_namespace() -> int:
        _libc_call("unshare", CLONE_NEWNET)
        _loopback_up()
        return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def _enter(self) -> None:
        _libc_call("setns", self._ns, CLONE_NEWNET)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        threading.Thread(target=target, args=args, daemon=True,
                         name="geventcheck-bridge").start()

    # -- starting processes inside ----------------------------------------------------------
    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        """``subprocess.Popen`` whose process (and all it starts) lives in the namespace."""
        def start() -> subprocess.Popen[bytes]:
            self._enter()
            return subprocess.Popen(*args, **kwargs)

        return _in_thread(start)

    # -- bridges ------------------------------------------------------------------------------
    def open_declarations(self) -> None:
        """A new audited child may declare its app's endpoints until its first task."""
        self._declaring = True

    def close_declarations(self) -> None:
        self._declaring = False

    def bridge(self, host: str, port: int) -> list[str]:
        """Listen on host:port inside and relay to it outside; returns the addresses used."""
        try:
            infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            return []
        addresses = sorted({str(info[4][0]) for info in infos})
        for address in addresses:
            with self._lock:
                if (address, port) in self.bridges or self._closed:
                    continue
                listener = _in_thread(functools.partial(self._listen_inside, address, port))
                self.bridges[(address, port)] = listener
            self._spawn(self._accept, listener, (address, port))
        return addresses

    def _listen_inside(self, address: str, port: int) -> socket.socket:
        self._enter()
        if not _is_loopback(address):
            # The address must exist inside for a listener to bind it: put it on lo.
            subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=False,
                           capture_output=True)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, port))
        listener.listen(64)
        return listener

    def _accept(self, listener: socket.socket, target: tuple[str, int]) -> None:
        while True:
            try:
                inside, _ = listener.accept()
            except OSError:
                return  # closed
            self._spawn(self._relay, inside, target)

    def _relay(self, inside: socket.socket, target: tuple[str, int]) -> None:
        try:
            outside = socket.create_connection(target, timeout=30)
        except OSError:
            inside.close()
            return
        outside.settimeout(None)
        self._spawn(_pump, outside, inside)
        _pump(inside, outside)

    # -- the control socket -------------------------------------------------------------------
    def _serve_control(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            self._spawn(self._declarations, conn)

    def _declarations(self, conn: socket.socket) -> None:
        """Lines ``HOST PORT``; each answered ``ok ADDRESS...`` or ``refused``."""
        with conn, conn.makefile("rwb") as stream:
            for raw in stream:
                parts = raw.decode("utf-8", "replace").split()
                reply = "refused"
                if self._declaring and len(parts) == 2 and parts[1].isdigit():
                    addresses = self.bridge(parts[0], int(parts[1]))
                    reply = "ok " + " ".join(addresses) if addresses else reply
                stream.write(reply.encode() + b"\n")
                stream.flush()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            listeners = list(self.bridges.values())
        for sock in (*listeners, self._control):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.control_path)
        os.close(self._ns)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(_BUFFER):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        source.close()


@contextlib.contextmanager
def sandbox_for(cfg: dict[str, Any], workdir: str, *, enabled: bool) -> Iterator[Sandbox | None]:
    """For one audit: the namespace with the scenario's services and allow entries bridged
    in (``cfg["services"]``, ``["host_map"]``, ``["allow"]``), and ``cfg["sandbox"]`` set to
    the control socket the audited child declares the app's own endpoints on."""
    if not enabled:
        yield None
        return
    sandbox = Sandbox(workdir)
    try:
        for host, port in [*cfg["services"], *cfg["host_map"].values(), *cfg["allow"]]:
            if port is not None:
                sandbox.bridge(host, int(port))
        cfg["sandbox"] = sandbox.control_path
        yield sandbox
    finally:
        sandbox.close()


def declare(control_path: str, endpoints: Iterable[tuple[str, int | None]]) -> dict[str, str]:
    """From the audited child: ask for bridges to the app's endpoints before any task runs.

    Returns the names that were resolved outside, mapped to an address bridged inside.
    """
    mapped: dict[str, str] = {}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(control_path)
        with sock.makefile("rwb") as stream:
            for host, port in endpoints:
                if port is None:
                    continue
                stream.write(f"{host} {port}\n".encode())
                stream.flush()
                reply = stream.readline().decode().split()
                if reply[:1] == ["ok"] and len(reply) > 1 and not _is_ip(host):
                    mapped[host] = reply[1]
    return mapped


def _is_ip(host: str) -> bool:
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return True
    return False


__all__ = ["Sandbox", "SandboxError", "declare", "sandbox_for"]
