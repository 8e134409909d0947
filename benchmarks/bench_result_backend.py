#!/usr/bin/env python
"""What the per-greenlet result backend costs each task on a gevent worker (real Redis).

    python benchmarks/bench_result_backend.py [--redis redis://127.0.0.1:6379/14] [--tasks 400]

A trivial task runs through Celery's own tracer (``build_tracer``, as the worker runs
it), each call in a new greenlet of a ``gevent.pool.Pool``, as the gevent pool does,
with ``result_backend_thread_safe`` False (Celery's default: every greenlet builds its
own RedisBackend and connection pool) and True (one backend shared). It prints per-task
latency and wall time per task at several concurrencies, then deletes the result keys
it wrote. The number the doctor's and the audit's note rest on.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  (after patching, as a worker imports)
import statistics  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import gevent.pool  # noqa: E402
import redis  # noqa: E402
from celery import Celery  # noqa: E402
from celery.app.trace import build_tracer  # noqa: E402


def run(url: str, thread_safe: bool, tasks: int, concurrency: int) -> tuple[list[float], float]:
    """Per-task latencies (ms) and wall time per task (ms) for one configuration."""
    app = Celery(f"bench{uuid.uuid4().hex}", broker="memory://", backend=url)
    app.conf.result_backend_thread_safe = thread_safe
    app.set_current()
    app.set_default()

    def noop_body() -> int:
        return 1

    noop = app.task(name=f"bench.noop.{uuid.uuid4().hex}")(noop_body)
    tracer = build_tracer(noop.name, noop, app=app, eager=False, hostname="bench@localhost")
    latencies: list[float] = []

    def one() -> None:
        start = time.perf_counter()
        task_id = str(uuid.uuid4())
        tracer(task_id, (), {}, {"id": task_id, "delivery_info": {}})
        latencies.append((time.perf_counter() - start) * 1000)

    pool = gevent.pool.Pool(concurrency)
    start = time.perf_counter()
    for _ in range(tasks):
        pool.spawn(one)
    pool.join()
    return latencies, (time.perf_counter() - start) * 1000 / tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--tasks", type=int, default=400)
    args = parser.parse_args()
    try:
        for concurrency in (1, 10, 50):
            for thread_safe in (False, True):
                run(args.redis, thread_safe, 20, concurrency)  # warm-up
                lat, wall = run(args.redis, thread_safe, args.tasks, concurrency)
                lat.sort()
                print(f"concurrency {concurrency:3d}  thread_safe={thread_safe!s:5}  "
                      f"latency median {statistics.median(lat):7.2f} ms  "
                      f"p90 {lat[int(len(lat) * 0.9)]:7.2f} ms  wall per task {wall:6.2f} ms")
    finally:
        client = redis.Redis.from_url(args.redis)
        for key in client.scan_iter("celery-task-meta-*"):
            client.delete(key)


if __name__ == "__main__":
    main()
