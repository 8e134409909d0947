"""Reading what a blocked OS thread is doing, from /proc and its Python frame.

Everything here runs in the monitor's native thread while the audited thread
is stalled, so it must never touch the gevent hub: plain file reads only.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import platform
import re
import struct
from dataclasses import dataclass

# Linux syscall numbers by machine; only the ones a stalled thread sits in.
_SYSCALLS = {
    "x86_64": {
        0: "read", 1: "write", 7: "poll", 17: "pread64", 20: "writev", 23: "select",
        35: "nanosleep", 42: "connect", 43: "accept", 44: "sendto", 45: "recvfrom",
        46: "sendmsg", 47: "recvmsg", 61: "wait4", 72: "fcntl", 73: "flock",
        202: "futex", 230: "clock_nanosleep", 232: "epoll_wait", 270: "pselect6",
        271: "ppoll", 281: "epoll_pwait", 288: "accept4", 247: "waitid",
    },
    "aarch64": {
        25: "fcntl", 32: "flock", 63: "read", 64: "write", 66: "writev", 72: "pselect6",
        73: "ppoll", 98: "futex", 101: "nanosleep", 115: "clock_nanosleep",
        22: "epoll_pwait", 202: "accept", 203: "connect", 206: "sendto",
        207: "recvfrom", 211: "sendmsg", 212: "recvmsg", 242: "accept4", 260: "wait4",
        95: "waitid",
    },
}[platform.machine()] if platform.machine() in ("x86_64", "aarch64") else {}

# Syscalls whose first argument is the file descriptor waited on.
_FD_FIRST = {
    "read", "write", "pread64", "writev", "connect", "accept", "accept4", "sendto",
    "recvfrom", "sendmsg", "recvmsg", "fcntl", "flock",
}
_POLL_LIKE = {"poll", "ppoll"}

# What the syscall means for a reader, in the words of a finding.
WAIT_WORDS = {
    "poll": "waiting in poll()", "ppoll": "waiting in ppoll()", "select": "waiting in select()",
    "pselect6": "waiting in select()", "read": "reading", "recvfrom": "receiving",
    "recvmsg": "receiving", "write": "writing", "sendto": "sending", "sendmsg": "sending",
    "connect": "connecting", "accept": "accepting", "accept4": "accepting",
    "futex": "waiting on a native lock (futex)", "wait4": "waiting for a child process (wait4)",
    "waitid": "waiting for a child process", "nanosleep": "sleeping natively",
    "clock_nanosleep": "sleeping natively", "flock": "waiting for a file lock (flock)",
    "fcntl": "waiting for a file lock (fcntl)",
}


@dataclass(frozen=True)
class SyscallSample:
    """One look at /proc/self/task/TID/syscall: ``running`` means on the CPU."""

    name: str
    fd: int | None = None
    # the thread's stack pointer, and the futex word waited on (futex only)
    sp: int | None = None
    uaddr: int | None = None


class SyscallReader:
    """Reads /proc/self/task/TID/syscall of one thread without letting go of the GIL.

    ``ctypes.PyDLL`` keeps the GIL across ``pread``, so a thread running Python code
    is seen waiting for the GIL (futex) while a thread inside native code that
    released the GIL is seen ``running`` or in its own syscall: the only way to
    tell a Python loop from a C computation from outside.
    """

    def __init__(self, native_tid: int) -> None:
        self._fd = os.open(f"/proc/self/task/{native_tid}/syscall", os.O_RDONLY)
        self._buf = ctypes.create_string_buffer(256)
        libc = ctypes.PyDLL(None)
        self._pread = libc.pread
        self._pread.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_long]
        self._pread.restype = ctypes.c_ssize_t

    def close(self) -> None:
        os.close(self._fd)

    def read(self) -> SyscallSample:
        size = self._pread(self._fd, self._buf, len(self._buf), 0)
        if size <= 0:
            return SyscallSample("unknown")
        fields = self._buf.raw[:size].decode(errors="replace").split()
        return parse_syscall(fields)


def parse_syscall(fields: list[str]) -> SyscallSample:
    if not fields or fields[0] == "running":
        return SyscallSample("running")
    try:
        number = int(fields[0])
    except ValueError:
        return SyscallSample("unknown")
    name = _SYSCALLS.get(number, f"syscall {number}")
    try:
        args = [int(a, 16) for a in fields[1:7]]
        sp = int(fields[7], 16) if len(fields) >= 9 else None
    except ValueError:
        return SyscallSample(name)
    fd: int | None = None
    if name in _FD_FIRST and args:
        fd = args[0]
    elif name in _POLL_LIKE and len(args) >= 2 and args[1] >= 1 and args[0]:
        fd = _first_polled_fd(args[0])
    uaddr = args[0] if name == "futex" and args else None
    return SyscallSample(name, fd, sp, uaddr)


def _first_polled_fd(address: int) -> int | None:
    """The first ``struct pollfd`` of a poll() call: it is in our own memory."""
    try:
        fd = ctypes.c_int.from_address(address).value
    except (ValueError, OSError):
        return None
    return fd if fd >= 0 else None


def peer_of_fd(fd: int) -> str | None:
    """``host:port`` (or a socket path) that a socket descriptor is connected to."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    if not target.startswith("socket:["):
        return None
    inode = target[len("socket:[") : -1]
    for table in ("tcp", "tcp6", "udp", "udp6"):
        peer = _peer_in_table(f"/proc/self/net/{table}", inode)
        if peer:
            return peer
    return _unix_path(inode)


def _peer_in_table(path: str, inode: str) -> str | None:
    try:
        with open(path) as fh:
            next(fh, None)
            for line in fh:
                cols = line.split()
                if len(cols) > 9 and cols[9] == inode:
                    return _decode_address(cols[2])
    except OSError:
        return None
    return None


def _decode_address(hex_address: str) -> str:
    host_hex, port_hex = hex_address.split(":")
    raw = bytes.fromhex(host_hex)
    if len(raw) == 4:
        host = str(ipaddress.IPv4Address(struct.unpack("<I", raw)[0]))
        return f"{host}:{int(port_hex, 16)}"
    words = struct.unpack("<4I", raw)
    packed = struct.pack(">4I", *words)
    address = ipaddress.IPv6Address(packed)
    mapped = address.ipv4_mapped
    if mapped is not None:
        return f"{mapped}:{int(port_hex, 16)}"
    return f"[{address}]:{int(port_hex, 16)}"


def _unix_path(inode: str) -> str | None:
    try:
        with open("/proc/self/net/unix") as fh:
            next(fh, None)
            for line in fh:
                cols = line.split()
                if len(cols) >= 7 and cols[6] == inode:
                    return cols[7] if len(cols) > 7 else "unix socket"
    except OSError:
        return None
    return None


# Shared objects that every native call passes through: they name no library of the app's.
_PLUMBING = re.compile(r"/(libc|libpthread|libdl|ld-linux[^/]*|libpython[^/]*|python[0-9.]*)"
                       r"(\.so[^/]*)?$")
_SCAN_BYTES = 32768


class NativeCallers:
    """Which shared libraries a thread blocked in a syscall is inside, innermost first.

    Reads the thread's native stack from its stack pointer upwards (our own
    memory, no GIL or frame needed) and keeps the words that are addresses in an
    executable mapping: the return addresses of the native calls under way. A
    blocked psycopg2 query shows ``libpq`` and ``_psycopg``; a ctypes call
    ``libffi``. Stale words make this a hint, which is how findings use it.
    """

    def __init__(self) -> None:
        self._text: list[tuple[int, int, str]] = []
        self._stacks: list[tuple[int, int]] = []

    def refresh(self) -> None:
        """Re-read /proc/self/maps (libraries loaded since, new thread stacks)."""
        text, stacks = [], []
        try:
            with open("/proc/self/maps") as fh:
                for line in fh:
                    cols = line.split()
                    low, high = (int(x, 16) for x in cols[0].split("-"))
                    path = cols[5] if len(cols) > 5 else ""
                    if "x" in cols[1] and path.startswith("/"):
                        text.append((low, high, path))
                    elif "rw" in cols[1]:
                        stacks.append((low, high))
        except (OSError, ValueError, IndexError):
            return
        self._text, self._stacks = text, stacks

    def libraries(self, sp: int | None, limit: int = 4) -> tuple[str, ...]:
        if not sp:
            return ()
        region = next(((lo, hi) for lo, hi in self._stacks if lo <= sp < hi), None)
        if region is None:
            return ()
        size = min(_SCAN_BYTES, region[1] - sp) // 8 * 8
        try:
            words = memoryview(ctypes.string_at(sp, size)).cast("Q")
        except (ValueError, OSError):
            return ()
        found: list[str] = []
        text = self._text
        for word in words:
            if word < 0x1000:
                continue
            for low, high, path in text:
                if low <= word < high:
                    if _PLUMBING.search(path):
                        if "python" in path and found:
                            return tuple(found)  # back in the interpreter: done
                    elif path not in found:
                        found.append(path)
                        if len(found) >= limit:
                            return tuple(found)
                    break
        return tuple(found)


def library_label(path: str) -> str:
    """``libpq``, ``_psycopg``, ``libffi``: a library's name without its version."""
    name = os.path.basename(path)
    return re.split(r"[.-]", name, maxsplit=1)[0] if not name.startswith("_") else \
        name.split(".", 1)[0]


def library_package(path: str) -> str | None:
    """The installed package a native library came with: ``psycopg2`` for both
    ``psycopg2/_psycopg...so`` and ``psycopg2_binary.libs/libpq...so``."""
    parts = path.split(os.sep)
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            index = parts.index(marker)
            if index + 1 < len(parts) - 1:
                top = parts[index + 1]
                for suffix in (".libs", "_binary"):
                    top = top.removesuffix(suffix)
                return top.lstrip(".") or None
    return None
