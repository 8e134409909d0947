#!/usr/bin/env python
"""What the canary costs a real ``celery worker -P gevent`` running I/O tasks.

    python benchmarks/canary_overhead.py [--tasks 3000] [--rounds 3] [--latency-ms 200]
                                         [--concurrency 200] [--redis redis://127.0.0.1:6379/13]

The same batch of I/O tasks (an HTTP call to a loopback mock with the given latency, as
the ExamX I/O tasks make) runs through the same worker command with and without
``GEVENTCHECK_CANARY=1`` (metrics endpoint, summaries pushed to Redis: everything on),
the two interleaved round after round so that the machine's mood hits both alike. It
prints each run's throughput and the worker's CPU time per task, and the medians' ratio.
The CPU per task is the steadier figure on a shared machine: throughput at this
concurrency is capped by one process's CPU, so the canary's cost shows up there first.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_run(url: str, redis_url: str, tasks: int, concurrency: int, canary: bool,
            extra_env: dict[str, str] | None = None) -> tuple[float, float]:
    """(tasks per second, worker CPU ms per task) for one worker over the batch."""
    queue = f"geventcheck.bench.canary.{uuid.uuid4().hex[:8]}"
    done_key = f"{queue}.done"
    env = {**os.environ, "CANARYLOAD_BROKER": redis_url, "CANARYLOAD_QUEUE": queue,
           "PYTHONPATH": str(HERE)}
    env.pop("GEVENTCHECK_CANARY", None)
    if canary:
        env.update(GEVENTCHECK_CANARY="1", GEVENTCHECK_CANARY_PORT=str(free_port()),
                   GEVENTCHECK_CANARY_REDIS=redis_url,
                   GEVENTCHECK_CANARY_DEPLOYMENT=f"bench-{uuid.uuid4().hex[:6]}")
        env.update(extra_env or {})
    os.environ.update({k: env[k] for k in ("CANARYLOAD_BROKER", "CANARYLOAD_QUEUE")})
    # the worker's log goes to a file: a pipe nobody reads fills up and stops the worker
    log = tempfile.NamedTemporaryFile(prefix="canary-overhead-", suffix=".log")  # noqa: SIM115
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "canaryload", "worker", "-P", "gevent",
         "-c", str(concurrency), "-Q", queue, "--without-heartbeat", "--without-gossip",
         "--without-mingle", "-l", "warning"],
        cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT)
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        sys.path.insert(0, str(HERE))
        import canaryload

        app = canaryload.app
        app.conf.broker_url = redis_url

        def wait_done(count: int) -> None:
            deadline = time.monotonic() + 600
            while int(client.get(done_key) or 0) < count:
                if worker.poll() is not None:
                    raise SystemExit(f"the worker died:\n{Path(log.name).read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise SystemExit("the batch did not finish in 10 minutes")
                time.sleep(0.02)

        # warm up: the worker is ready and its connections are made
        app.send_task("canaryload.call_api", (url, done_key), queue=queue)
        wait_done(1)
        cpu0 = cpu_seconds(worker.pid)
        started = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for _ in range(tasks):
                app.send_task("canaryload.call_api", (url, done_key), queue=queue,
                              producer=producer)
        wait_done(tasks + 1)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(worker.pid) - cpu0
        return tasks / elapsed, cpu / tasks * 1000
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
        client.delete(queue, done_key)
        for key in client.scan_iter(match="geventcheck:canary:bench-*"):
            client.delete(key)
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()

    from geventcheck.services import HttpService, Route, start_services

    api = HttpService("api", (Route("GET", "/items", json={"items": list(range(20))},
                                    latency_ms=args.latency_ms),))
    with start_services([api], Path("/tmp")) as running:
        url = f"{running.endpoints['api'].url}/items"
        figures: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for round_ in range(args.rounds):
            order = (False, True) if round_ % 2 == 0 else (True, False)
            for canary in order:
                rate, cpu = one_run(url, args.redis, args.tasks, args.concurrency, canary)
                figures[canary].append((rate, cpu))
                print(f"round {round_ + 1}  canary {'on ' if canary else 'off'}  "
                      f"{rate:7.1f} tasks/s  {cpu:6.3f} ms CPU/task", flush=True)
    off_rate = statistics.median(r for r, _ in figures[False])
    on_rate = statistics.median(r for r, _ in figures[True])
    off_cpu = statistics.median(c for _, c in figures[False])
    on_cpu = statistics.median(c for _, c in figures[True])
    print(f"\nmedian throughput: off {off_rate:.1f}/s, on {on_rate:.1f}/s  "
          f"-> canary costs {100 * (1 - on_rate / off_rate):+.1f}% throughput (target <= 2%)")
    print(f"median CPU per task: off {off_cpu:.3f} ms, on {on_cpu:.3f} ms  "
          f"-> {100 * (on_cpu / off_cpu - 1):+.1f}% CPU per task")


if __name__ == "__main__":
    main()
