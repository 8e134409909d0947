"""Database connections a task opens on a gevent worker (``db-connections``).

Django keeps connections greenlet-local once patched: every task greenlet that
queries opens its own, per alias, and keeps it until the task ends, so a worker
holds about one connection per running task. Celery's Django fixup closes the
task greenlet's own connections at ``task_postrun``; a connection opened in a
greenlet the task spawns stays open until the garbage collector frees its
wrapper. The counts are measured, never estimated: Django's
``connection_created`` signal for each connection (which greenlet, where in the
app's code, its server process id), and for PostgreSQL ``pg_stat_activity``
and ``max_connections``, read on a connection of the probe's own.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import greenlet

from .._model import Finding, Severity
from .._paths import is_audited_file, relative
from ._probe import ProbeRun
from ._threadlocals import task_of

KINDS = ("db-connections",)

REPLICAS_ENV = "GEVENTCHECK_REPLICAS"
# A common gevent concurrency, assumed when the app sets no worker_concurrency.
# (Celery's own default is the CPU count, which suits prefork, not gevent.)
ASSUMED_CONCURRENCY = 100
SAMPLE_S = 0.01

FIX_CAPACITY = (
    "put PgBouncer (transaction pooling) between the workers and PostgreSQL, or use a "
    "gevent-aware pool (django-db-geventpool) so greenlets share a bounded set of "
    "connections, or lower the worker concurrency; CONN_MAX_AGE cannot help: the "
    "connections are per greenlet, and no later task reuses them"
)
FIX_SPAWNED = (
    "close the connection in the greenlet or thread that opened it (connection.close() "
    "in a finally), or run the query in the task's own greenlet, whose connections "
    "Celery's Django fixup closes when the task ends"
)
FIX_NO_FIXUP = (
    "set DJANGO_SETTINGS_MODULE before the Celery app is created, so Celery installs its "
    "Django fixup (it closes a task's connections when the task ends), or close them in "
    "a task_postrun receiver"
)


@dataclass
class _Conn:
    """One connection Django opened during the probe run."""

    alias: str
    wrapper: weakref.ref[Any]
    raw: weakref.ref[Any] | None  # None: the driver's connection takes no weak reference
    pid: int | None  # the server process serving it (PostgreSQL's backend pid)
    copy: int | None  # id() of the task copy it was opened for
    own: bool  # opened in the copy's own greenlet (not one it spawned, not a thread)
    thread: bool  # opened in another OS thread
    file: str | None
    line: int | None
    function: str | None

    def is_open(self) -> bool:
        raw = self.raw() if self.raw is not None else None
        if self.raw is not None and raw is None:
            return False  # freed, and the driver closes on dealloc
        wrapper = self.wrapper()
        if raw is None:
            return wrapper is not None and wrapper.connection is not None
        closed = getattr(raw, "closed", None)
        if isinstance(closed, bool | int) and closed:
            return False
        if closed is None and wrapper is not None:
            return wrapper.connection is raw
        return True


def _backend_pid(raw: Any) -> int | None:
    """The server process id, read from the client library: no query is sent."""
    try:
        info = getattr(raw, "info", None)  # psycopg 3
        if info is not None and hasattr(info, "backend_pid"):
            return int(info.backend_pid)
        if hasattr(raw, "get_backend_pid"):  # psycopg2
            return int(raw.get_backend_pid())
    except Exception:
        return None
    return None


def _hex_addr(text: str) -> tuple[str, int]:
    """An address of /proc/net/tcp (little-endian 32-bit words in hex) and its port."""
    host, port = text.rsplit(":", 1)
    raw = bytes.fromhex(host)
    packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(packed)), int(port, 16)


def own_tcp_ends(server_port: int) -> list[tuple[str, int]]:
    """Local (address, port) of this process's established TCP sockets to ``server_port``.

    PostgreSQL shows them as ``client_addr``/``client_port`` of this process's backends.
    """
    inodes = set()
    try:
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return []
    ends = []
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) < 10 or cols[3] != "01" or cols[9] not in inodes:  # 01: ESTABLISHED
                continue
            local, remote = _hex_addr(cols[1]), _hex_addr(cols[2])
            if remote[1] == server_port:
                host = local[0].removeprefix("::ffff:")
                ends.append((host, local[1]))
    return ends


class _Server:
    """A connection of the probe's own to a PostgreSQL server the app uses."""

    def __init__(self, raw: Any, port: int, endpoint: str) -> None:
        self.raw = raw
        self.port = port
        self.endpoint = endpoint
        self.pid = _backend_pid(raw)

    def scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        cur = self.raw.cursor()
        try:
            cur.execute(sql, params or None)
            row = cur.fetchone()
        finally:
            cur.close()
        return row[0] if row else None

    def setting(self, name: str) -> int | None:
        try:
            return int(self.scalar("SELECT setting FROM pg_settings WHERE name = %s", (name,)))
        except Exception:
            return None

    def live(self, pids: list[int]) -> int:
        """How many of these backends PostgreSQL still lists."""
        if not pids:
            return 0
        return int(self.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)))

    def ours(self) -> int:
        """Backends serving this process, found by the local ends of its sockets."""
        ends = own_tcp_ends(self.port)
        if not ends:
            return 0
        return int(self.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND "
            "(host(client_addr), client_port) IN "
            "(SELECT * FROM unnest(%s::text[], %s::int[]))",
            ([h for h, _ in ends], [p for _, p in ends])))

    def clients(self) -> int:
        return int(self.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.raw.close()


def _django_postgres() -> dict[str, Any]:
    """Aliases of the configured Django databases that are PostgreSQL, with settings."""
    if "django.db" not in sys.modules:
        return {}
    from django.conf import settings

    if not settings.configured:
        return {}
    return {alias: db for alias, db in getattr(settings, "DATABASES", {}).items()
            if "postgresql" in str(db.get("ENGINE", "")) or "postgis" in str(db.get("ENGINE", ""))}


def _open_server(alias: str, db: dict[str, Any]) -> _Server | None:
    """A raw connection with the alias's own parameters, outside Django's bookkeeping:
    no ``connection_created``, no wrapper in any greenlet's storage, no pool."""
    if (db.get("OPTIONS") or {}).get("pool"):
        return None
    from django.db import connections

    wrapper = connections.create_connection(alias)
    params = wrapper.get_connection_params()
    params.setdefault("connect_timeout", 5)  # libpq's; an unreachable host must not hang
    raw = wrapper.get_new_connection(params)
    raw.autocommit = True
    host = str(db.get("HOST") or "local socket")
    port = int(db.get("PORT") or 5432)
    return _Server(raw, port, f"{host}:{port}")


def _fixup_closes_connections() -> bool:
    """Whether Celery's Django fixup is connected to ``task_postrun`` in this worker."""
    from celery import signals

    for _key, receiver in list(getattr(signals.task_postrun, "receivers", [])):
        func = receiver() if isinstance(receiver, weakref.ReferenceType) else receiver
        if type(getattr(func, "__self__", None)).__name__ == "DjangoWorkerFixup":
            return True
    return False


def _planned(app: Any) -> tuple[int, str]:
    """The worker concurrency to scale to, and where it comes from."""
    configured = getattr(getattr(app, "conf", None), "worker_concurrency", None)
    if isinstance(configured, int) and configured > 0:
        return configured, f"worker_concurrency {configured} (the app's setting)"
    if isinstance(configured, str) and configured.isdigit() and int(configured) > 0:
        return int(configured), f"worker_concurrency {configured} (the app's setting)"
    return ASSUMED_CONCURRENCY, (
        f"-c {ASSUMED_CONCURRENCY} (assumed, a common gevent setting: the app sets no "
        "worker_concurrency, and Celery's default, the CPU count, suits prefork)")


def _replicas() -> int:
    try:
        return max(1, int(os.environ.get(REPLICAS_ENV, "1")))
    except ValueError:
        return 1


class Probe:
    """Connections per task copy, the peak at once, and those left open."""

    kinds: tuple[str, ...] = KINDS

    def __init__(self) -> None:
        self._run: ProbeRun | None = None
        self._conns: list[_Conn] = []
        self._peak = 0
        self._copy_peak = 0
        self._servers: dict[str, _Server] = {}  # by alias
        self._pg_peak = 0
        self._ours_before: int | None = None
        self._sampler: Any = None
        self._stop = False
        self._unreachable: set[str] = set()
        self._main_thread = 0
        self._uid = ("geventcheck.dbconnections", id(self))

    def begin(self, run: ProbeRun) -> None:
        try:
            self._begin(run)
        except BaseException:
            self._undo()  # the runner skips end() of a probe whose begin() failed
            raise

    def _undo(self) -> None:
        self._stop = True
        if self._sampler is not None:
            # Not killed mid-query: the same connection may still have to answer.
            self._sampler.join(timeout=2)
            self._sampler.kill()
        if "django.db.backends.signals" in sys.modules:
            from django.db.backends.signals import connection_created

            connection_created.disconnect(dispatch_uid=self._uid)
        for server in self._servers.values():
            server.close()
        self._servers, self._sampler, self._run = {}, None, None
        self._conns = []

    def _begin(self, run: ProbeRun) -> None:
        self._run = run
        self._conns, self._peak, self._copy_peak, self._pg_peak = [], 0, 0, 0
        self._servers, self._ours_before, self._sampler = {}, None, None
        self._stop = False
        if "django.db" not in sys.modules:
            return
        from django.db.backends.signals import connection_created
        from gevent.monkey import get_original

        self._main_thread = get_original("_thread", "get_ident")()
        for alias, db in _django_postgres().items():
            if alias in self._unreachable:
                continue
            try:
                server = _open_server(alias, db)
            except Exception:
                self._unreachable.add(alias)  # no server numbers; the signals still count
                server = None
            if server is not None:
                self._servers[alias] = server
        if self._servers:
            first = next(iter(self._servers.values()))
            self._ours_before = self._ours_safe(first)
            import gevent

            self._sampler = gevent.spawn(self._sample)
        connection_created.connect(self._on_created, weak=False, dispatch_uid=self._uid)

    def _on_created(self, sender: Any = None, connection: Any = None, **kwargs: Any) -> None:
        """Runs in whatever greenlet or thread made Django connect."""
        run = self._run
        if run is None or connection is None:
            return
        from gevent.monkey import get_original

        current = greenlet.getcurrent()
        copy = task_of(current, run)
        raw = getattr(connection, "connection", None)
        try:
            raw_ref: weakref.ref[Any] | None = weakref.ref(raw) if raw is not None else None
        except TypeError:
            raw_ref = None
        frame: FrameType | None = sys._getframe(1)
        while frame is not None and not is_audited_file(frame.f_code.co_filename, run.roots):
            frame = frame.f_back
        conn = _Conn(
            alias=str(getattr(connection, "alias", "?")), wrapper=weakref.ref(connection),
            raw=raw_ref, pid=_backend_pid(raw), copy=id(copy) if copy is not None else None,
            own=copy is current,
            thread=get_original("_thread", "get_ident")() != self._main_thread,
            file=relative(frame.f_code.co_filename) if frame else None,
            line=frame.f_lineno if frame else None,
            function=frame.f_code.co_name if frame else None)
        # The number open can only rise when one opens: checking here finds the true peak.
        self._conns.append(conn)
        open_now = [c for c in self._conns if c.is_open()]
        self._peak = max(self._peak, len(open_now))
        if conn.copy is not None:
            same = sum(1 for c in open_now if c.copy == conn.copy)
            self._copy_peak = max(self._copy_peak, same)

    def _sample(self) -> None:
        """How many of the run's connections PostgreSQL lists, every few milliseconds."""
        import gevent

        while not self._stop:
            self._count_live()
            gevent.sleep(SAMPLE_S)

    def _count_live(self) -> None:
        live = 0
        for alias, server in self._servers.items():
            pids = [c.pid for c in self._conns if c.alias == alias and c.pid is not None]
            try:
                live += server.live(pids)
            except Exception:
                return
        self._pg_peak = max(self._pg_peak, live)

    def end(self, run: ProbeRun, outcomes: list[dict[str, Any]]) -> list[Finding]:
        self._stop = True
        if self._sampler is not None:
            self._sampler.join(timeout=2)  # its last count comes in after every copy ended
        if "django.db.backends.signals" in sys.modules:
            from django.db.backends.signals import connection_created

            connection_created.disconnect(dispatch_uid=self._uid)
        try:
            if self._conns:
                self._count_live()
                return self._findings(run)
            return []
        finally:
            self._undo()

    def _findings(self, run: ProbeRun) -> list[Finding]:
        findings = [self._summary(run)]
        fixup = _fixup_closes_connections()
        left = [c for c in self._conns if c.is_open() and (not c.own or not fixup)]
        by_place: dict[tuple[str | None, int | None], list[_Conn]] = {}
        for conn in left:
            by_place.setdefault((conn.file, conn.line), []).append(conn)
        for group in by_place.values():
            findings.append(self._left_open(group, fixup))
        return findings

    def _server_side(self, conns: list[_Conn]) -> str:
        """What PostgreSQL says of these connections now, when it can be asked."""
        lines = []
        for alias, server in self._servers.items():
            pids = sorted(c.pid for c in conns if c.alias == alias and c.pid is not None)
            if pids:
                try:
                    live = server.live(pids)
                except Exception:
                    continue
                lines.append(f"pg_stat_activity on {server.endpoint} still lists {live} of "
                             f"them")
        return f" ({'; '.join(lines)})" if lines else ""

    def _summary(self, run: ProbeRun) -> Finding:
        conns = self._conns
        aliases = sorted({c.alias for c in conns})
        copies = len({c.copy for c in conns if c.copy is not None})
        n = len(conns)
        who = f"{copies} of {run.concurrency} concurrent copies" if copies \
            else f"code outside the task's greenlets (while {run.concurrency} copies ran)"
        text = (f"{who} opened {n} database connection{'s' if n != 1 else ''} to "
                f"{', '.join(repr(a) for a in aliases)} (Django's connection_created): peak "
                f"{self._peak} open at once, at most {self._copy_peak} per copy")
        severity: Severity = "info"
        fix = None
        endpoint = None
        if self._servers:
            server = self._servers.get(aliases[0]) or next(iter(self._servers.values()))
            endpoint = server.endpoint
            text += (f"; pg_stat_activity, read every {SAMPLE_S * 1000:g} ms, listed at most "
                     f"{self._pg_peak} of them at once")
            ours = self._ours_safe(server)
            if ours is not None and self._ours_before is not None:
                text += (f" (this whole process: {self._ours_before} backends before the run, "
                         f"{ours} after)")
            if self._copy_peak:
                capacity, exceeded = self._capacity(run, server)
                text += ". " + capacity
                if exceeded:
                    severity, fix = "warning", FIX_CAPACITY
        else:
            text += (". A gevent worker holds one connection per alias for each running task "
                     "that queries, until the task ends")
        return Finding("db-connections", severity, text, endpoint=endpoint, phase="probe",
                       fix=fix)

    def _ours_safe(self, server: _Server) -> int | None:
        try:
            return server.ours()
        except Exception:
            return None

    def _capacity(self, run: ProbeRun, server: _Server) -> tuple[str, bool]:
        """What the planned workers would need against what the server allows."""
        planned, source = _planned(run.app)
        replicas = _replicas()
        need = planned * replicas * self._copy_peak
        limit = server.setting("max_connections")
        if limit is None:
            return "max_connections could not be read", False
        reserved = (server.setting("superuser_reserved_connections") or 0) \
            + (server.setting("reserved_connections") or 0)  # PostgreSQL 16+
        available = limit - reserved
        try:
            in_use = f" ({server.clients()} client connections open now)"
        except Exception:
            in_use = ""
        exceeded = need > available
        return (f"A gevent worker holds one connection per alias for each running task that "
                f"queries, until the task ends: {source} x {replicas} "
                f"replica{'s' if replicas != 1 else ''} ({REPLICAS_ENV}) x {self._copy_peak} "
                f"per task = up to {need} connections, {'more than' if exceeded else 'within'} "
                f"the {available} that max_connections = {limit} leaves to non-superusers on "
                f"{server.endpoint}{in_use}"), exceeded

    def _left_open(self, group: list[_Conn], fixup: bool) -> Finding:
        first = group[0]
        n = len(group)
        runs = len({c.copy for c in group}) or 1
        each = f"{n // runs}" if n % runs == 0 else f"about {n / runs:.1f}"
        if first.thread:
            opened = "in another OS thread"
        elif first.copy is None:
            opened = "outside the task's greenlets"
        elif not first.own:
            opened = "in a greenlet the task spawned"
        else:
            opened = "in the task's own greenlet"
        if first.own:  # only without the fixup: with it, the task's own are closed
            why = ("this Celery app has no Django fixup connected (DJANGO_SETTINGS_MODULE was "
                   "not set when it was created), so nothing closes a task's connections "
                   "when it ends")
            fix = FIX_NO_FIXUP
        else:
            why = ("Celery's Django fixup closes only the task greenlet's own connections when "
                   f"the task ends{'' if fixup else ', and this app has none connected'}, so "
                   f"each run of the task leaves {each} open until the garbage collector "
                   "happens to free the wrapper")
            fix = FIX_SPAWNED
        by = f" by {first.function}()" if first.function else ""
        were = "was" if n == 1 else "were"
        return Finding(
            "db-connections", "warning",
            f"{n} connection{'s' if n != 1 else ''} opened{by} {opened} {were} still open "
            f"after the task finished{self._server_side(group)}: {why}; a worker that runs "
            "the task often piles them up",
            file=first.file, line=first.line, function=first.function, phase="probe",
            fix=fix)
