#!/usr/bin/env python
"""What the canary costs a real ``celery worker -P gevent`` running I/O tasks.

    python benchmarks/canary_overhead.py [--tasks 3000] [--rounds 3] [--latency-ms 200]
                                         [--concurrency 200] [--redis redis://127.0.0.1:6379/13]

The same batch of I/O tasks (an HTTP call to a loopback mock with the given latency and
a write to Redis, as the ExamX I/O tasks make) runs through the same worker command with
and without ``GEVENTCHECK_CANARY=1`` (metrics endpoint, summaries pushed to Redis:
everything on), interleaved round after round so that the machine's mood hits both
alike, plus a second worker without the canary: the difference between the two identical
arms is the noise floor, and a difference smaller than it is not a measurement. It prints
each run's throughput and the worker's CPU time per task (all its threads: at this
concurrency one process's CPU caps the throughput, so a cost shows there first), the
medians' ratios, and what the canary's per-event work costs, timed in this process: the
two loop callbacks per hub iteration and the two task signal handlers per task.
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
        arms = ("off", "on", "off again")
        figures: dict[str, list[tuple[float, float]]] = {arm: [] for arm in arms}
        for round_ in range(args.rounds):
            order = arms if round_ % 2 == 0 else arms[::-1]
            for arm in order:
                rate, cpu = one_run(url, args.redis, args.tasks, args.concurrency, arm == "on")
                figures[arm].append((rate, cpu))
                print(f"round {round_ + 1}  canary {arm:9s}  "
                      f"{rate:7.1f} tasks/s  {cpu:6.3f} ms CPU/task", flush=True)

    def median(arm: str, which: int) -> float:
        return statistics.median(f[which] for f in figures[arm])

    off_rate, on_rate, again_rate = (median(a, 0) for a in arms)
    off_cpu, on_cpu, again_cpu = (median(a, 1) for a in arms)
    noise_rate = 100 * abs(1 - again_rate / off_rate)
    noise_cpu = 100 * abs(again_cpu / off_cpu - 1)
    print(f"\nmedian throughput: off {off_rate:.1f}/s, on {on_rate:.1f}/s, off again "
          f"{again_rate:.1f}/s -> canary {100 * (1 - on_rate / off_rate):+.1f}% "
          f"(noise floor {noise_rate:.1f}%; target: at most 2%)")
    print(f"median CPU per task: off {off_cpu:.3f} ms, on {on_cpu:.3f} ms, off again "
          f"{again_cpu:.3f} ms -> canary {100 * (on_cpu / off_cpu - 1):+.1f}% "
          f"(noise floor {noise_cpu:.1f}%)")
    per_iteration, per_task = event_costs()
    iterations_per_task = 2.1  # geventcheck_hub_loop_iterations_total / tasks, read off a run
    share = (per_task + iterations_per_task * per_iteration) / (off_cpu * 1000)
    print(f"per-event work, timed here: {per_iteration:.2f} us per hub iteration, "
          f"{per_task:.2f} us per task -> {100 * share:.2f}% of {off_cpu:.3f} ms per task "
          "(the sampler thread's wakes come on top: see the end-to-end figure)")


def event_costs() -> tuple[float, float]:
    """Microseconds of the two loop callbacks per iteration and the two task signal
    handlers per task, called directly many times."""
    from celery import Celery

    from geventcheck.canary._config import CanaryConfig
    from geventcheck.canary._digest import Digester
    from geventcheck.canary._step import Canary
    from geventcheck.canary._watch import LoopWatch

    class Loop:  # LoopWatch needs a loop only to start; the callbacks are called here
        pass

    watch = LoopWatch(Loop())
    count = 200_000
    started = time.perf_counter()
    for _ in range(count):
        watch._on_check()
        watch._on_prepare()
    per_iteration = (time.perf_counter() - started) / count * 1e6
    app = Celery("eventcost")
    def job() -> None:
        return None

    task = app.task(name="eventcost.job")(job)
    canary = Canary(app, CanaryConfig(port=None))
    canary._digester = Digester((), threshold_s=0.05, warn_s=0.01)
    canary._edges = canary._digester.edges
    count = 50_000
    started = time.perf_counter()
    for _ in range(count):
        canary._prerun(task_id="t", task=task)
        canary._postrun(task_id="t", task=task, state="SUCCESS")
    per_task = (time.perf_counter() - started) / count * 1e6
    return per_iteration, per_task


if __name__ == "__main__":
    main()
