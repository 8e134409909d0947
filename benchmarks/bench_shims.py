"""Five concurrent 0.2 s queries on a patched gevent process, without and with each shim.

A driver that waits in C runs them one after another (about 1 s); with its shim they wait
together (about 0.2 s). Each case runs in a fresh process (a shim is process-wide), against
the real PostgreSQL and MariaDB of this machine (PGHOST/PGPORT/PGUSER/PGDATABASE,
MYSQL_HOST/MYSQL_PORT/MYSQL_USER/MYSQL_PASSWORD/MYSQL_DATABASE).

    .venv/bin/python benchmarks/bench_shims.py

A benchmark, not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

COPIES = 5
SLEEP_S = 0.2

CASE = r"""
from gevent import monkey; monkey.patch_all()
import json, os, sys, time
import gevent
driver, shim = sys.argv[1], sys.argv[2]
if shim != "-":
    from geventcheck import patches
    patches.apply(shim)
PG = dict(host=os.environ.get("PGHOST", "127.0.0.1"), port=int(os.environ.get("PGPORT", "5432")),
          user=os.environ.get("PGUSER", "postgres"), dbname=os.environ.get("PGDATABASE", "test"))
MY = dict(host=os.environ.get("MYSQL_HOST", "127.0.0.1"),
          port=int(os.environ.get("MYSQL_PORT", "3306")),
          user=os.environ.get("MYSQL_USER", "root"),
          password=os.environ.get("MYSQL_PASSWORD", ""),
          database=os.environ.get("MYSQL_DATABASE", "test"))
if driver == "psycopg2":
    import psycopg2
    connect, sql = (lambda: psycopg2.connect(**PG)), "SELECT pg_sleep(%s)"
else:
    import MySQLdb
    connect, sql = (lambda: MySQLdb.connect(**MY)), "SELECT SLEEP(%s)"
conns = [connect() for _ in range(COPIES)]   # connecting is not what is measured
def one(conn):
    cur = conn.cursor(); cur.execute(sql, (SLEEP_S,)); cur.fetchall(); cur.close()
start = time.perf_counter()
gevent.joinall([gevent.spawn(one, c) for c in conns], raise_error=True)
print(json.dumps(time.perf_counter() - start))
"""

CASES = [
    ("psycopg2", "-", "psycopg2, no shim"),
    ("psycopg2", "psycopg2", "psycopg2 + geventcheck.patches.psycopg2"),
    ("mysqlclient", "-", "mysqlclient, no shim"),
    ("mysqlclient", "mysqldb", "mysqlclient + geventcheck.patches.mysqldb"),
]


def main() -> None:
    source = f"COPIES = {COPIES}\nSLEEP_S = {SLEEP_S}\n" + CASE
    print(f"{COPIES} concurrent {SLEEP_S:g} s queries on a patched gevent process "
          f"(serial would be {COPIES * SLEEP_S:.1f} s):")
    for driver, shim, label in CASES:
        proc = subprocess.run([sys.executable, "-c", source, driver, shim], capture_output=True,
                              text=True, timeout=120, env=dict(os.environ))
        if proc.returncode != 0:
            print(f"  {label:<45} failed: {proc.stderr.strip().splitlines()[-1]}")
            continue
        took = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  {label:<45} {took:6.2f} s  ({took / SLEEP_S:.1f}x one query)")


if __name__ == "__main__":
    main()
