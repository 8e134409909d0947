"""Each shim, in a fresh patched process of its own (patching never leaks into this one):
what it changes that a user would notice, that a second ``patch()`` changes nothing, and
that every refusal says clearly why. Real PostgreSQL, MariaDB and Redis where the shim is
about talking to them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from .conftest import ROOT, require_service

PATCH_FIRST = "from gevent import monkey; monkey.patch_all()\n"


def run(code: str, *, patch: bool = True, env: dict[str, str] | None = None) -> Any:
    """Run ``code`` in a new interpreter; it prints one JSON value as its last line."""
    import os

    source = (PATCH_FIRST if patch else "") + textwrap.dedent(code)
    proc = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


REFUSE = """
import json
def refusal(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except (ImportError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
"""


# psycopg2 ------------------------------------------------------------------------------------

def test_psycopg2_patch_installs_psycogreen_once() -> None:
    out = run(REFUSE + """
import psycopg2.extensions
from geventcheck.patches import psycopg2 as shim
before = shim.is_applied()
shim.patch(); first = psycopg2.extensions.get_wait_callback()
shim.patch(); shim.patch_psycopg2()
print(json.dumps([before, shim.is_applied(), first.__module__,
                  psycopg2.extensions.get_wait_callback() is first]))
""")
    assert out == [False, True, "psycogreen.gevent", True]


def test_psycopg2_refuses_to_replace_another_wait_callback() -> None:
    out = run(REFUSE + """
import psycopg2.extensions
def mine(conn): pass
psycopg2.extensions.set_wait_callback(mine)
from geventcheck.patches import psycopg2 as shim
print(json.dumps([refusal(shim.patch), psycopg2.extensions.get_wait_callback() is mine]))
""")
    assert out[0].startswith("ImportError: psycopg2 already has a different wait callback"), out
    assert "__main__.mine" in out[0] and out[1] is True


def test_psycopg2_refusals_name_what_is_missing() -> None:
    out = run(REFUSE + """
import sys
sys.modules["psycogreen"] = None
from geventcheck.patches import psycopg2 as shim
missing = refusal(shim.patch)
del sys.modules["psycogreen"]
import psycopg2, psycopg2.extensions
del psycopg2.extensions.set_wait_callback
print(json.dumps([missing, refusal(shim.patch), psycopg2.__version__.split()[0]]))
""")
    assert "(psycogreen.gevent is missing)" in out[0] and "geventcheck[postgres]" in out[0], out
    assert f"psycopg2 {out[2]} has no set_wait_callback()" in out[1], out


# MySQLdb -------------------------------------------------------------------------------------

def test_mysqldb_patch_makes_mysqldb_pymysql_with_versions_django_accepts() -> None:
    out = run(REFUSE + """
from geventcheck.patches import mysqldb as shim
before = shim.is_applied()
shim.patch(); shim.patch(); shim.patch_mysqldb()
import MySQLdb, pymysql
import django
from django.conf import settings
settings.configure()
import django.db.backends.mysql.base  # refuses a MySQLdb older than it supports
print(json.dumps([before, shim.is_applied(), MySQLdb is pymysql, list(MySQLdb.version_info[:3])]))
""")
    assert out[:3] == [False, True, True], out
    assert tuple(out[3]) >= (2, 2, 1), out


def test_mysqldb_refuses_when_mysqlclient_is_already_imported() -> None:
    out = run(REFUSE + """
import MySQLdb
from geventcheck.patches import mysqldb as shim
print(json.dumps([refusal(shim.patch), ".".join(map(str, MySQLdb.version_info[:3])),
                  shim.is_applied()]))
""")
    assert out[0].startswith("ImportError: MySQLdb is already imported and is mysqlclient "
                             f"{out[1]}"), out
    assert "before anything imports MySQLdb" in out[0] and out[2] is False, out


def test_mysqldb_without_pymysql_says_how_to_install_it() -> None:
    out = run(REFUSE + """
import sys; sys.modules["pymysql"] = None
from geventcheck.patches import mysqldb as shim
print(json.dumps(refusal(shim.patch)))
""")
    assert out == "ImportError: the mysqldb shim needs PyMySQL: pip install 'geventcheck[mysql]'"


# grpc ----------------------------------------------------------------------------------------

def _grpc() -> None:
    import importlib.util

    if importlib.util.find_spec("grpc") is None:
        pytest.skip("grpcio is not installed (pip install grpcio, part of the test extra)")


def test_grpc_patch_switches_grpc_to_gevent_once() -> None:
    _grpc()
    out = run("""
import json
from geventcheck.patches import grpc as shim
before = shim.is_applied()
shim.patch(); shim.patch(); shim.patch_grpc()
import grpc
channel = grpc.insecure_channel("127.0.0.1:1")
channel.close()
print(json.dumps([before, shim.is_applied()]))
""")
    assert out == [False, True]


def test_grpc_refuses_once_a_channel_exists() -> None:
    _grpc()
    out = run(REFUSE + """
import grpc
channel = grpc.insecure_channel("127.0.0.1:1")
from geventcheck.patches import grpc as shim
print(json.dumps([refusal(shim.patch), shim.is_applied()]))
""")
    assert out[0].startswith("ImportError: 1 gRPC object(s) (Channel) already exist"), out
    assert out[1] is False


def test_grpc_missing_names_the_version() -> None:
    out = run(REFUSE + """
import sys; sys.modules["grpc"] = None
from geventcheck.patches import grpc as shim
print(json.dumps(refusal(shim.patch)))
""")
    assert out.startswith("ImportError: the grpc shim needs grpcio >= 1.24"), out
    assert "is installed)" in out, out


# redis ---------------------------------------------------------------------------------------

REDIS_LOAD = REFUSE + """
import gevent, redis
def errors(client, n=150):
    seen = []
    def one():
        try:
            client.blpop("geventcheck-test-never-pushed", timeout=0.3)
        except Exception as exc:
            seen.append(str(exc))
    gevent.joinall([gevent.spawn(one) for _ in range(n)])
    return sorted(set(seen)), len(seen)
"""


def test_redis_default_pool_fails_at_concurrency_150_and_the_shim_fixes_it() -> None:
    require_service("redis")
    out = run(REDIS_LOAD + """
from geventcheck.patches import redis as shim
early = redis.Redis(host="127.0.0.1", port=6379)   # built before the shim, default pool
without = errors(early)
shim.patch(concurrency=150); shim.patch(concurrency=150); shim.patch(concurrency=50)
late = redis.Redis(host="127.0.0.1", port=6379)
sized = redis.Redis(host="127.0.0.1", port=6379, max_connections=7)   # the app's own choice
print(json.dumps([without, errors(early), errors(late), shim.is_applied(150), shim.limit(),
                  late.connection_pool.max_connections, sized.connection_pool.max_connections,
                  refusal(shim.patch, concurrency=0)]))
""")
    (messages, count), early, late, applied, limit, pool_max, sized_max, bad = out
    assert count == 50 and messages == ["Too many connections"], out
    assert early == [[], 0] and late == [[], 0], out
    assert applied is True and limit == 150 and pool_max == 150, out
    assert sized_max == 7, out
    assert bad == ("ValueError: the redis shim needs the worker's concurrency, a positive "
                   "integer (got 0)")


def test_redis_shim_does_nothing_where_the_default_has_room() -> None:
    out = run("""
import json, redis
from geventcheck.patches import redis as shim
original = redis.client.ConnectionPool
shim.patch(concurrency=80)
print(json.dumps([redis.client.ConnectionPool is original, shim.is_applied(80)]))
""")
    assert out == [True, True]


# offload -------------------------------------------------------------------------------------

OFFLOAD = """
import ctypes, json, time, threading
import gevent
from geventcheck.patches import offload, run_blocking
libc = ctypes.CDLL(None)
ticks = []
def ticker():
    while True:
        ticks.append(time.monotonic()); gevent.sleep(0.01)
"""


def test_offload_turns_a_native_sleep_into_a_cooperative_wait() -> None:
    out = run(OFFLOAD + """
t = gevent.spawn(ticker); gevent.sleep(0.05)
n = len(ticks); libc.usleep(300000); blocked = len(ticks) - n
n = len(ticks); run_blocking(libc.usleep, 300000); offloaded = len(ticks) - n
t.kill()
print(json.dumps([blocked, offloaded]))
""")
    blocked, offloaded = out
    # 300 ms at one tick per 10 ms: the hub could tick ~30 times; blocked it ticks at most once
    assert blocked <= 1 < 10 <= offloaded, out


def test_offload_bounds_the_threads() -> None:
    out = run(REFUSE + OFFLOAD + """
lock = threading.Lock(); running = [0]; peak = [0]
@offload(max_threads=2)
def native_call(seconds):
    with lock:
        running[0] += 1; peak[0] = max(peak[0], running[0])
    libc.usleep(int(seconds * 1e6))
    with lock:
        running[0] -= 1
    return seconds
results = gevent.joinall([gevent.spawn(native_call, 0.1) for _ in range(6)])
print(json.dumps([peak[0], [g.value for g in results], refusal(offload, max_threads=0)]))
""")
    peak, values, bad = out
    assert peak == 2 and values == [0.1] * 6, out
    assert bad == "ValueError: offload: max_threads must be a positive integer (got 0)"


def test_offload_raises_the_calls_own_exception() -> None:
    out = run("""
import json
from geventcheck.patches import run_blocking
def boom():
    raise KeyError("from the thread")
try:
    run_blocking(boom)
except KeyError as exc:
    print(json.dumps(repr(exc)))
""")
    assert out == "KeyError('from the thread')"


# psycopg 3 -----------------------------------------------------------------------------------

def test_psycopg_imported_after_patching_needs_no_shim() -> None:
    out = run("""
import json, psycopg
from geventcheck.patches import psycopg as shim
shim.patch(); shim.patch()
print(json.dumps(shim.is_applied()))
""")
    assert out is True


@pytest.mark.parametrize(("patch_first", "env", "why"), [
    (False, {}, "psycopg was imported before gevent patched the process"),
    (True, {"PSYCOPG_WAIT_FUNC": "wait_c"}, "PSYCOPG_WAIT_FUNC=wait_c forces it"),
])
def test_psycopg_with_the_blocking_wait_says_the_fix_is_the_import_order(
        patch_first: bool, env: dict[str, str], why: str) -> None:
    out = run(REFUSE + """
import psycopg, psycopg.waiting
from gevent import monkey; monkey.patch_all()
from geventcheck.patches import psycopg as shim
print(json.dumps([refusal(shim.patch), shim.is_applied()]))
""", patch=patch_first, env=env)
    assert out[0].startswith("ImportError: psycopg "), out
    assert "chose the C wait function wait_c" in out[0] and why in out[0], out
    assert "the fix is the import order" in out[0] and out[1] is False, out


# groups and the registry ---------------------------------------------------------------------

def test_a_group_is_all_or_nothing() -> None:
    out = run(REFUSE + """
import MySQLdb, psycopg2.extensions
from geventcheck import patches
print(json.dumps([refusal(patches.apply_all, ["psycopg2", "mysqldb"]),
                  psycopg2.extensions.get_wait_callback() is None]))
""")
    assert out[0].startswith("ImportError: MySQLdb is already imported"), out
    assert out[1] is True, "the psycopg2 shim applied by the group was not rolled back"


def test_unknown_names_are_refused() -> None:
    out = run(REFUSE + """
from geventcheck import patches
from celery import Celery
print(json.dumps([refusal(patches.apply, "nope"),
                  refusal(patches.bootstrap, Celery("x"), shims=["nope"])]))
""")
    assert out[0].startswith("ValueError: unknown shim 'nope'; known: grpc, mysqldb"), out
    assert out[1].startswith("ValueError: bootstrap(): unknown shim 'nope'"), out


def test_mysqldb_and_redis_refusals_name_the_version() -> None:
    out = run(REFUSE + """
import pymysql
del pymysql.install_as_MySQLdb
from geventcheck.patches import mysqldb, redis as redis_shim
no_hook = refusal(mysqldb.patch)
import redis, redis.connection
del redis.connection.BlockingConnectionPool
print(json.dumps([no_hook, pymysql.__version__, refusal(redis_shim.patch, concurrency=150),
                  redis.__version__]))
""")
    assert out[0] == (f"ImportError: PyMySQL {out[1]} has no install_as_MySQLdb(); the mysqldb "
                      "shim needs PyMySQL >= 0.7"), out
    assert out[2] == (f"ImportError: redis-py {out[3]} has no redis.client.ConnectionPool or "
                      "BlockingConnectionPool; the redis shim needs redis-py >= 4"), out


def test_redis_missing_says_how_to_install_it() -> None:
    out = run(REFUSE + """
import sys; sys.modules["redis"] = None
from geventcheck.patches import redis as shim
print(json.dumps([refusal(shim.patch, concurrency=150), shim.is_applied()]))
""")
    assert out == ["ImportError: the redis shim needs redis-py: pip install 'geventcheck[redis]'",
                   False]


def test_bootstrap_is_idempotent_and_leaves_a_non_worker_process_alone() -> None:
    """A web process or a script that imports the app is no gevent worker: nothing changes,
    even when it sends worker_init itself with a prefork pool."""
    out = run("""
import json, sys
from celery import Celery, signals
from geventcheck import patches
app = Celery("x")
first = patches.bootstrap(app)
second = patches.bootstrap(app)
import psycopg2.extensions
class Sender:
    pool_cls = "prefork"
    concurrency = 4
signals.worker_init.send(sender=Sender())
print(json.dumps([first is second, len(signals.worker_init.receivers),
                  psycopg2.extensions.get_wait_callback() is None, "MySQLdb" in sys.modules,
                  first.applied, first.line]))
""", patch=False)
    same, receivers, no_callback, mysqldb_loaded, applied, line = out
    assert same is True and receivers == 1, out
    assert no_callback is True and mysqldb_loaded is False and applied == [], out
    assert line == 6, out  # where the app called it: the doctor shows it
