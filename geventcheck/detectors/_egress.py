"""The egress guard: an audited task may reach loopback and the scenario's services, nothing else.

An audit runs real task code; a task that calls a payment API or sends mail must
not do so for real. While a guard is active, every connection, datagram and name
lookup for any other destination is refused before anything is sent, and
recorded with the app's line that tried, so the report can say ``egress``.

Three layers, because no single one sees everything:

* a CPython audit hook (``socket.connect`` — also fired by ``connect_ex`` —,
  ``socket.sendto``, ``socket.sendmsg`` and the lookup events) sees every
  connection and datagram made through the ``_socket`` C type, which both the
  standard library's and gevent's sockets use. A hook cannot be removed, so it
  is installed once and consults the module-level active guard.
* wrappers around the lookup functions (``_socket``'s, ``socket``'s and the
  gevent resolvers' methods) run in the calling greenlet: gevent's default
  resolver does the C lookup in a threadpool worker, where the audit hook
  would see the worker's stack instead of the app's line, and c-ares does it
  in C with no audit event at all. The wrappers also apply ``host_map``.
* the hook is the backstop for lookup functions bound before the wrappers.

Not seen: sockets opened in native code (libpq, libmysqlclient, grpc core,
pycurl) and child processes that are not Python (Python children inherit the guard,
see ``_children``); ``--sandbox`` (``runner/_sandbox.py``) stops those.
"""

from __future__ import annotations

import _socket
import contextlib
import dataclasses
import functools
import importlib
import ipaddress
import os
import socket
import sys
import sysconfig
import threading
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, NoReturn

Kind = Literal["connect", "sendto", "lookup"]

_LOOKUP_FUNCTIONS = ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr",
                     "getnameinfo")
_GEVENT_RESOLVERS = ("gevent.resolver.thread", "gevent.resolver.blocking",
                     "gevent.resolver.ares", "gevent.resolver.dnspython")
_MAX_STACK = 30
_OWN_FILES = frozenset({__file__, os.path.realpath(__file__)})


def _roots(*keys: str) -> tuple[str, ...]:
    return tuple(os.path.realpath(p) + os.sep for k in keys if (p := sysconfig.get_paths().get(k)))


# In a virtualenv platstdlib is the venv's lib/pythonX.Y, which holds site-packages.
_STDLIB_ROOTS = _roots("stdlib", "platstdlib")
_SITE_ROOTS = _roots("purelib", "platlib")
# Address families that never leave the machine.
_LOCAL_FAMILIES = frozenset(
    getattr(socket, name) for name in ("AF_UNIX", "AF_NETLINK", "AF_ALG") if hasattr(socket, name)
)
_INET_FAMILIES = frozenset({socket.AF_INET, socket.AF_INET6})
_SEND_METHODS = ("connect", "connect_ex", "sendto", "sendmsg")
_MARK = "__geventcheck_egress__"


@dataclasses.dataclass(frozen=True)
class EgressAttempt:
    """One refused attempt: where it went and the app's line that tried."""

    host: str
    port: int | None
    kind: Kind
    file: str | None
    line: int | None
    function: str | None
    stack: tuple[str, ...]

    @property
    def endpoint(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


def _default_is_app_file(path: str) -> bool:
    from .._paths import is_audited_file

    return is_audited_file(path)


def _text(host: object) -> str | None:
    """A host as text; None for a passive lookup (no host)."""
    if host is None:
        return None
    if isinstance(host, bytes | bytearray):
        return bytes(host).decode("ascii", "replace")
    return str(host)


def _port(port: object) -> int | None:
    if isinstance(port, int):
        return port
    if isinstance(port, bytes | str) and port.isdigit():
        return int(port)
    return None


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _is_local_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback, or the unspecified address (which Linux connects to this host)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


class EgressGuard:
    """Refuses and records traffic to anything but loopback and the allowed endpoints.

    ``allowed``: (host, port) endpoints the scenario provides, port None for any;
    ``allowed_hosts``: names that may be looked up for real; ``host_map``: names
    answered locally with the given address (a mock of a remote API); ``port_map``:
    for such names, the port the mock really listens on, whatever port the code asks.
    """

    def __init__(
        self,
        allowed: Iterable[tuple[str, int | None]] = (),
        allowed_hosts: Iterable[str] = (),
        is_app_file: Callable[[str], bool] | None = None,
        host_map: Mapping[str, str] | None = None,
        port_map: Mapping[str, int] | None = None,
    ) -> None:
        self.allowed: set[tuple[str, int | None]] = {(h.lower(), p) for h, p in allowed}
        self.allowed_hosts: set[str] = {h.lower() for h in allowed_hosts}
        self.host_map: dict[str, str] = {k.lower(): v for k, v in (host_map or {}).items()}
        self.port_map: dict[str, int] = {k.lower(): v for k, v in (port_map or {}).items()}
        self.is_app_file = is_app_file or _default_is_app_file
        self.attempts: list[EgressAttempt] = []
        # A machine's own name resolves from /etc/hosts; smtplib and logging look it up.
        self._own_names = {"localhost", _ORIGINALS["gethostname"]().lower()}
        self._lock = threading.Lock()

    # -- switching ---------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return _ACTIVE is self

    def activate(self) -> None:
        """Start refusing; the newest activated guard is the one in force."""
        global _ACTIVE
        _install()
        _ACTIVE = self

    def deactivate(self) -> None:
        global _ACTIVE
        if _ACTIVE is self:
            _ACTIVE = None

    def __enter__(self) -> EgressGuard:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def take_attempts(self) -> list[EgressAttempt]:
        """The attempts recorded so far; the list starts empty again."""
        with self._lock:
            taken, self.attempts = self.attempts, []
        return taken

    # -- policy ------------------------------------------------------------------------------

    def mapped(self, host: str | None) -> str | None:
        """The address ``host_map`` answers for this name, if any."""
        return None if host is None else self.host_map.get(host.lower())

    def mapped_port(self, host: str | None, port: Any) -> Any:
        """The port a mapped name's mock listens on, or ``port`` unchanged."""
        return port if host is None else self.port_map.get(host.lower(), port)

    def lookup_allowed(self, host: str | None, reverse: bool = False) -> bool:
        """Whether looking this host up may go to the system resolver.

        A forward lookup of an address literal is only parsed, never sent: the
        connection that follows is what gets judged. A reverse lookup asks DNS.
        """
        if host is None or host == "":
            return True
        name = host.lower()
        ip = _ip(name)
        if ip is not None:
            return (not reverse or _is_local_ip(ip)
                    or any(h == str(ip) for h, _ in self.allowed))
        return (
            name in self._own_names
            or name in self.allowed_hosts
            or name in self.host_map
            or any(h == name for h, _ in self.allowed)
        )

    def connect_allowed(self, host: str, port: int | None) -> bool:
        """Whether a connection or datagram to this (resolved) endpoint may go out."""
        name = host.lower()
        if name == "":
            return True  # INADDR_ANY: this host
        ip = _ip(name)
        if ip is not None:
            if _is_local_ip(ip):
                return True
            name = str(ip)
        if (name, None) in self.allowed or (name, port) in self.allowed:
            return True
        if ip is not None or name in self.host_map:
            # A mapped name reaching C's own resolver would be looked up for real.
            return False
        return self._name_resolves_allowed(name, port)

    def _name_resolves_allowed(self, name: str, port: int | None) -> bool:
        """A connect by name (resolved in C): allowed when every address it has is."""
        if not self.lookup_allowed(name):
            return False
        try:
            infos = _ORIGINALS["getaddrinfo"](name, port, 0, socket.SOCK_STREAM)
        except OSError:
            return True  # C's own lookup fails the same way; nothing to connect to
        return all(self.connect_allowed(str(info[4][0]), port) for info in infos)

    def learn(self, name: str | None, addresses: Iterable[str]) -> None:
        """Addresses an allowed endpoint's name resolved to are allowed on the same ports."""
        if name is None:
            return
        ports = [p for h, p in self.allowed if h == name.lower()]
        ips = [str(ip) for address in addresses if (ip := _ip(address)) is not None]
        learned = {(ip, p) for ip in ips for p in ports}
        if not learned <= self.allowed:
            # A new set, not update(): another thread may be iterating the old one.
            self.allowed = self.allowed | learned

    def refuse(
        self, host: str, port: int | None, kind: Kind, frame: types.FrameType | None
    ) -> NoReturn:
        """Record the attempt and raise: nothing has been sent."""
        attempt = self._attempt(host, port, kind, frame)
        with self._lock:
            self.attempts.append(attempt)
        what = f"lookup of {attempt.endpoint}" if kind == "lookup" else (
            f"{'connection' if kind == 'connect' else 'datagram'} to {attempt.endpoint}")
        raise PermissionError(
            f"geventcheck egress guard: {what} refused "
            f"(only loopback and the scenario's services are reachable during an audit)"
        )

    def _attempt(
        self, host: str, port: int | None, kind: Kind, frame: types.FrameType | None
    ) -> EgressAttempt:
        stack: list[str] = []
        app: tuple[str, int, str] | None = None
        fallback: tuple[str, int, str] | None = None
        while frame is not None:
            path = frame.f_code.co_filename
            if path not in _OWN_FILES:
                where = (path, frame.f_lineno, frame.f_code.co_name)
                if len(stack) < _MAX_STACK:
                    stack.append(f"{path}:{where[1]} in {where[2]}")
                if app is None and self._is_app(path):
                    app = where
                if fallback is None and not _is_stdlib(path):
                    fallback = where
            frame = frame.f_back
        chosen = app or fallback
        return EgressAttempt(
            host=host, port=port, kind=kind,
            file=chosen[0] if chosen else None,
            line=chosen[1] if chosen else None,
            function=chosen[2] if chosen else None,
            stack=tuple(stack),
        )

    def _is_app(self, path: str) -> bool:
        try:
            return bool(self.is_app_file(path))
        except Exception:
            return False


@functools.lru_cache(maxsize=1024)
def _is_stdlib(path: str) -> bool:
    if path.startswith("<frozen"):
        return True
    real = os.path.realpath(path)
    return real.startswith(_STDLIB_ROOTS) and not real.startswith(_SITE_ROOTS)


_ACTIVE: EgressGuard | None = None
# The C lookup functions, unwrapped: ``_socket`` is never patched by gevent.
_ORIGINALS: dict[str, Callable[..., Any]] = {
    name: getattr(getattr(_socket, name), _MARK, getattr(_socket, name))
    for name in (*_LOOKUP_FUNCTIONS, "gethostname")
}
# Set while a lookup wrapper calls through: the hook then need not judge again.
_vetted = threading.local()
_install_lock = threading.Lock()
_hook_installed = False


def active_guard() -> EgressGuard | None:
    return _ACTIVE


# -- the audit hook ----------------------------------------------------------------------------


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Refuse connections, datagrams and lookups the active guard does not allow."""
    guard = _ACTIVE
    if guard is None or not event.startswith("socket."):
        return
    if event == "socket.connect":
        _check_send(guard, args[0], args[1], "connect")
    elif event in ("socket.sendto", "socket.sendmsg"):
        _check_send(guard, args[0], args[1], "sendto")
    elif getattr(_vetted, "depth", 0):
        return  # a lookup wrapper has judged it, with arguments the event lacks
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"):
        host = _text(args[0])
        if not guard.lookup_allowed(host, reverse=event == "socket.gethostbyaddr"):
            guard.refuse(host or "", _port(args[1]) if len(args) > 1 else None, "lookup",
                         sys._getframe(1))
    elif event == "socket.getnameinfo":
        # The event does not carry the flags: judge it as a reverse lookup.
        _check_nameinfo(guard, args[0], 0, sys._getframe(1))


def _check_send(guard: EgressGuard, sock: object, address: object, kind: Kind) -> None:
    if address is None or isinstance(address, str | bytes | bytearray):
        return  # already connected, or a unix socket path
    if getattr(sock, "family", None) in _LOCAL_FAMILIES:
        return
    if (isinstance(address, tuple) and len(address) >= 2
            and isinstance(address[0], str | bytes) and isinstance(address[1], int)):
        host = _text(address[0]) or ""
        if host == "<broadcast>" or not guard.connect_allowed(host, address[1]):
            guard.refuse(host, address[1], kind, sys._getframe(2))
        return
    # Raw packets, CAN, Bluetooth, vsock...: nothing a task needs during an audit.
    guard.refuse(repr(address), None, kind, sys._getframe(2))


def _check_nameinfo(guard: EgressGuard, sockaddr: object, flags: object,
                    frame: types.FrameType | None) -> None:
    if isinstance(flags, int) and flags & socket.NI_NUMERICHOST:
        return  # no reverse lookup
    if isinstance(sockaddr, tuple) and sockaddr:
        host = _text(sockaddr[0])
        if not guard.lookup_allowed(host, reverse=True):
            port = sockaddr[1] if len(sockaddr) > 1 else None
            guard.refuse(host or "", _port(port), "lookup", frame)


# -- the lookup wrappers -----------------------------------------------------------------------


def _wrap_lookup(name: str, func: Callable[..., Any], method: bool) -> Callable[..., Any]:
    """A lookup function that asks the active guard first, in the caller's stack."""
    skip = 1 if method else 0

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        guard = _ACTIVE
        if guard is not None and len(args) == skip and "host" in kwargs:
            args = (*args, kwargs.pop("host"), kwargs.pop("port", None))  # getaddrinfo(host=)
        if guard is None or len(args) <= skip:
            return func(*args, **kwargs)
        call = _guard_lookup(guard, name, list(args), skip, sys._getframe(1))
        _vetted.depth = getattr(_vetted, "depth", 0) + 1
        try:
            result = func(*call, **kwargs)
        finally:
            _vetted.depth -= 1
        host = _text(call[skip])
        if name != "getnameinfo" and guard.allowed and not guard.mapped(host):
            guard.learn(host, _addresses(name, result))
        return result

    setattr(guarded, _MARK, func)
    return guarded


def _guard_lookup(
    guard: EgressGuard, name: str, args: list[Any], skip: int, frame: types.FrameType | None
) -> list[Any]:
    """Refuse, or return the arguments with a mapped host replaced by its address."""
    first = args[skip]
    if name == "getnameinfo":
        flags = args[skip + 1] if len(args) > skip + 1 else 0
        _check_nameinfo(guard, first, flags, frame)
        return args
    host = _text(first)
    target = guard.mapped(host)
    if target is not None:
        args[skip] = target
        if name == "getaddrinfo" and len(args) > skip + 1:
            args[skip + 1] = guard.mapped_port(host, args[skip + 1])
        return args
    if not guard.lookup_allowed(host, reverse=name == "gethostbyaddr"):
        port = _port(args[skip + 1]) if name == "getaddrinfo" and len(args) > skip + 1 else None
        guard.refuse(host or "", port, "lookup", frame)
    return args


def _addresses(name: str, result: Any) -> list[str]:
    try:
        if name == "getaddrinfo":
            return [str(info[4][0]) for info in result]
        if name == "gethostbyname":
            return [str(result)]
        return [str(a) for a in result[2]]
    except (TypeError, IndexError):
        return []


def _wrap_attr(owner: Any, name: str, method: bool) -> None:
    func = getattr(owner, name, None)
    if func is None or getattr(func, _MARK, None) is not None:
        return
    with contextlib.suppress(AttributeError, TypeError):  # a read-only owner: the hook remains
        setattr(owner, name, _wrap_lookup(name, func, method))


def _wrap_send(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """A socket method that judges a host NAME before C resolves it.

    CPython resolves the address (a DNS query) before it raises the
    ``socket.connect``/``socket.sendto`` audit event, so a name must be caught
    here; a name in ``host_map`` is replaced by its address.
    """

    @functools.wraps(func)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        guard = _ACTIVE
        if guard is not None and getattr(self, "family", None) in _INET_FAMILIES:
            args, kwargs = _guard_named_address(guard, name, args, kwargs)
        return func(self, *args, **kwargs)

    setattr(guarded, _MARK, func)
    return guarded


def _address_slot(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | str | None:
    """Where the destination is among a connect/sendto/sendmsg call's arguments."""
    if name == "sendmsg":  # sendmsg(buffers, ancdata=(), flags=0, address=None)
        return "address" if "address" in kwargs else (3 if len(args) > 3 else None)
    if not args:
        return None
    return 0 if name.startswith("connect") else len(args) - 1  # sendto(data[, flags], address)


def _guard_named_address(
    guard: EgressGuard, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    slot = _address_slot(name, args, kwargs)
    address = None if slot is None else kwargs[slot] if isinstance(slot, str) else args[slot]
    if not (isinstance(address, tuple) and len(address) >= 2
            and isinstance(address[0], str | bytes)):
        return args, kwargs
    host = _text(address[0]) or ""
    if host in ("", "<broadcast>") or _ip(host) is not None:
        return args, kwargs  # no lookup: the audit hook judges the address itself
    target = guard.mapped(host)
    if target is None:
        if not guard.lookup_allowed(host):
            kind: Kind = "connect" if name.startswith("connect") else "sendto"
            guard.refuse(host, _port(address[1]), kind, sys._getframe(1))
        return args, kwargs
    mapped = (target, guard.mapped_port(host, address[1]), *address[2:])
    if isinstance(slot, str):
        return args, {**kwargs, slot: mapped}
    assert slot is not None
    return (*args[:slot], mapped, *args[slot + 1:]), kwargs


def _socket_classes() -> list[type]:
    """The standard library's socket class, and gevent's once it is loaded."""
    classes: list[type] = [socket.socket]
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        classes.append(monkey.get_original("socket", "socket"))
    gevent_socket = getattr(sys.modules.get("gevent._socket3"), "socket", None)
    if isinstance(gevent_socket, type):
        classes.append(gevent_socket)
    return [cls for i, cls in enumerate(classes) if cls not in classes[:i]]


def _install() -> None:
    """Install the hook once and wrap every lookup entry point not yet wrapped.

    Idempotent: called on each ``activate()`` and after gevent patches, so
    whatever gevent put in place gets wrapped too.
    """
    global _hook_installed
    with _install_lock:
        for name in _LOOKUP_FUNCTIONS:
            _wrap_attr(_socket, name, method=False)
            _wrap_attr(socket, name, method=False)
        for cls in _gevent_resolver_classes():
            for name in _LOOKUP_FUNCTIONS:
                _wrap_attr(cls, name, method=True)
        for cls in _socket_classes():
            for name in _SEND_METHODS:
                method = getattr(cls, name, None)
                if method is not None and getattr(method, _MARK, None) is None:
                    setattr(cls, name, _wrap_send(name, method))
        if not _hook_installed:
            sys.addaudithook(_audit)
            _subscribe_to_gevent_patches()
            _hook_installed = True


def _gevent_resolver_classes() -> list[type]:
    """The gevent resolver classes loaded, plus the configured one (imported now)."""
    if "gevent" not in sys.modules:
        return []
    classes: list[type] = []
    try:
        from gevent._config import config

        classes.append(config.resolver.get())
    except Exception:  # an unusable GEVENT_RESOLVER fails in gevent itself, later
        pass
    for module_name in _GEVENT_RESOLVERS:
        cls = getattr(sys.modules.get(module_name), "Resolver", None)
        if isinstance(cls, type) and cls not in classes:
            classes.append(cls)
    return classes


def _subscribe_to_gevent_patches() -> None:
    """Re-wrap after ``patch_all()``: gevent replaces socket's lookup functions."""
    try:
        zope_event = importlib.import_module("zope.event")  # gevent's event bus
    except ImportError:
        return

    def on_event(event: object) -> None:
        if type(event).__name__.startswith("GeventDidPatch"):
            _install()

    zope_event.subscribers.append(on_event)
