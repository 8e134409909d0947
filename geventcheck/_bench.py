"""``geventcheck bench``: one batch of tasks through real prefork and gevent workers.

Each worker is started through Celery's own entry point (``python -m celery ... worker``,
the launcher of ``_workermode``: it dies with the bench even on SIGKILL) inside the
scenario's environment (``_workerenv``), consumes a private queue
``geventcheck.bench.<uuid>`` on the real broker, and is killed, its queue deleted, in every
case. Per run: a warm-up wave, solo runs (the service time of each task alone), then the
batch, sent at once, while ``_procstat`` samples the worker's memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._jsonlines import Reader, last_lines
from ._procstat import TreeSampler, cpu_seconds, machine_jiffies
from ._scenario import Scenario
from ._workerenv import WorkerEnvironment, scenario_worker

QUEUE_PREFIX = "geventcheck.bench."
DEFAULT_POOLS = ("prefork:8", "gevent:80", "gevent:200")
DEFAULT_BROKER = "redis://127.0.0.1:6379/15"
POOLS = ("prefork", "gevent", "eventlet", "threads", "solo")
_READY_TIMEOUT_S = 120.0
_QUEUE_TTL_S = 3600.0
_SOLO_ROUNDS = 2
_MIXED_ROUNDS = 5
_WAVE_SPREAD_S = 0.5
_STUCK_S = 60.0


class BenchError(Exception):
    """The bench cannot go on; the message is the one line the user sees."""


@dataclass(frozen=True)
class PoolSpec:
    pool: str
    concurrency: int

    @property
    def label(self) -> str:
        return f"{self.pool} -c {self.concurrency}"

    @property
    def processes_for_cpu(self) -> int:
        """How many cores the pool's task code can use: one process, unless prefork."""
        return min(self.concurrency, os.cpu_count() or 1) if self.pool == "prefork" else 1


def parse_pool(text: str) -> PoolSpec:
    """``prefork:8`` -> PoolSpec; ValueError (one line) when malformed."""
    pool, sep, count = text.partition(":")
    if not sep or pool not in POOLS or not count.isdigit() or int(count) <= 0:
        raise ValueError(f"{text!r} is not POOL:CONCURRENCY (POOL one of {', '.join(POOLS)}, "
                         "e.g. gevent:80)")
    return PoolSpec(pool, int(count))


@dataclass(frozen=True)
class BatchCall:
    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def batch_calls(scenario: Scenario | None, tasks: Sequence[str], count: int) -> list[BatchCall]:
    """``count`` calls taking the tasks in turn, each with its scenario calls in turn."""
    calls = scenario.calls if scenario else {}
    out = []
    for i in range(count):
        name = tasks[i % len(tasks)]
        options = calls.get(name) or ()
        call = options[(i // len(tasks)) % len(options)] if options else None
        out.append(BatchCall(name, call.args if call else (), call.kwargs if call else {}))
    return out


@dataclass
class RunFigures:
    """What one worker did with the batch; times in ms, rates per second."""

    label: str
    pool: str
    concurrency: int
    sent: int
    completed: int
    failed: int
    wall_s: float
    throughput: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_max_ms: float
    latency_mean_ms: float
    service_ms: float  # mean task_prerun -> task_postrun of the solo runs
    # per task of the batch, alone: task_prerun -> task_postrun wall and thread CPU (ms)
    solo: dict[str, dict[str, float]]
    memory_mb: float  # peak PSS (or RSS, see memory_measure) summed over the worker's processes
    memory_measure: str
    rss_peak_mb: float  # summed the same way: pages prefork children share count once each
    processes: int
    cpu_s: float
    cpu_ms_per_task: float
    little_bound: float  # concurrency / service time
    cpu_bound: float  # usable cores / CPU seconds per task
    bound_name: str
    bound: float
    of_bound: float  # throughput / bound
    patched: bool
    machine_busy: float  # share of the machine's CPU time busy during the batch (all processes)
    services_cpu_ms_per_task: float | None  # the mock services' CPU per task
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Worker:
    """One real worker on a private queue, with its output file; kill() in every case."""

    def __init__(self, spec: PoolSpec, app: str, broker_url: str, env: dict[str, str], *,
                 cwd: str | None, includes: Sequence[str], folder: str) -> None:
        from ._benchprobe import OUT_ENV, QUEUE_ENV
        from ._workermode import _LAUNCH

        self.queue_name = f"{QUEUE_PREFIX}{uuid.uuid4().hex}"
        self.out_path = os.path.join(folder, "bench.jsonl")
        self.log_path = os.path.join(folder, "worker.log")
        self._out = Reader(self.out_path)
        pooled = spec.pool in ("gevent", "eventlet", "threads") and broker_url.startswith(
            ("redis", "rediss"))
        env = {**env, OUT_ENV: self.out_path, QUEUE_ENV: json.dumps({
            "name": self.queue_name, "ttl": _QUEUE_TTL_S,
            "max_connections": spec.concurrency + 10 if pooled else None})}
        args = [sys.executable, "-c", _LAUNCH, str(os.getpid()), "-A", app, "-b", broker_url,
                "worker", "-P", spec.pool, "-c", str(spec.concurrency),
                "-I", ",".join([*includes, "geventcheck._benchprobe"]),
                "-Q", self.queue_name, "-n", f"geventcheck-bench-{uuid.uuid4().hex[:8]}@%h",
                "--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "warning"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def events(self) -> list[dict[str, Any]]:
        return self._out.read()

    def check_alive(self, what: str) -> None:
        code = self.proc.poll()
        if code is not None:
            tail = " | ".join(self.log_tail())
            how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            raise BenchError(f"the worker ({what}) {how}: {tail}")

    def log_tail(self, lines: int = 4) -> list[str]:
        return [line for line in last_lines(self.log_path, lines) if line.strip()]

    def kill(self) -> None:
        from ._workermode import _KILL_WAIT_S

        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(_KILL_WAIT_S)
                if sig == signal.SIGTERM:
                    continue  # the main process is gone: SIGKILL what stayed in its group
            except subprocess.TimeoutExpired:
                continue
        self.proc.poll()


class BenchSession:
    """The scenario's services and a broker connection; ``run`` one worker config at a time.

    Use it as a context manager: the services stop and the connection closes at the end.
    """

    def __init__(self, app: str, broker_url: str, *, scenario: Scenario | None = None,
                 django_settings: str | None = None, app_dir: str | None = None,
                 latency_ms: float | None = None) -> None:
        self.app = app
        self.broker_url = broker_url
        self.scenario = scenario
        self.django_settings = django_settings
        self.app_dir = app_dir
        self.latency_ms = latency_ms
        self.notes: list[str] = []
        self._stack = contextlib.ExitStack()
        self.env: WorkerEnvironment | None = None
        self.tmp = ""

    def __enter__(self) -> BenchSession:
        from celery import Celery

        try:
            self.sender = Celery("geventcheck-bench", broker=self.broker_url,
                                 set_as_current=False)
            self.connection = self.sender.connection_for_write()
            self.connection.ensure_connection(max_retries=1)
        except Exception as exc:
            raise BenchError(f"--broker: cannot reach {_redacted(self.broker_url)}: "
                             f"{exc}") from None
        self._stack.callback(self.connection.release)
        try:
            self.tmp = self._stack.enter_context(
                tempfile.TemporaryDirectory(prefix="geventcheck-bench-"))
            self.env = self._stack.enter_context(scenario_worker(
                self.scenario, self.tmp, app_dir=self.app_dir,
                django_settings=self.django_settings, allowed=[_endpoint(self.broker_url)],
                latency_ms=self.latency_ms))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.env is not None:
            self.notes += [f"a worker tried to reach {r}: refused" for r in self.env.refused()]
        self._stack.close()

    def run(self, spec: PoolSpec, calls: Sequence[BatchCall], *,
            extra_env: dict[str, str] | None = None,
            timeout_s: float | None = None) -> RunFigures:
        """One worker config over the batch, on a fresh worker killed afterwards.
        ``extra_env``: more environment variables for the worker (a canary switch, say)."""
        with self._worker(spec, extra_env) as run:
            return run.measure(calls, timeout_s)

    def run_mixed(self, spec: PoolSpec, calls: Sequence[BatchCall], cpu_call: BatchCall, *,
                  wave: int | None = None, rounds: int = _MIXED_ROUNDS) -> MixedFigures:
        """Waves of I/O tasks on one worker, every other one with ``cpu_call`` amid it."""
        with self._worker(spec, None) as run:
            return run.mixed(calls, cpu_call, wave or max(1, spec.concurrency // 4), rounds)

    @contextlib.contextmanager
    def _worker(self, spec: PoolSpec, extra_env: dict[str, str] | None) -> Iterator[_Run]:
        assert self.env is not None, "use BenchSession as a context manager"
        from ._doctorlive import clean_up, private_queue

        folder = tempfile.mkdtemp(prefix="run-", dir=self.tmp)
        worker = _Worker(spec, self.app, self.broker_url, self.env.for_run(folder, extra_env),
                         cwd=self.env.cwd, includes=self.env.includes, folder=folder)
        queue = private_queue(worker.queue_name, _QUEUE_TTL_S)
        try:
            yield _Run(self, worker, queue, spec)
        finally:
            worker.kill()
            try:  # on a connection of its own: Ctrl-C may have cut the sender's mid-command.
                # Declared first: kombu deletes only the bindings this connection knows.
                with self.sender.connection_for_write() as connection:
                    queue(connection.default_channel).declare()
                    clean_up(connection, queue)
            except Exception as exc:
                self.notes.append(f"the private queue {worker.queue_name} was not deleted "
                                  f"({exc}); the broker drops it after {_QUEUE_TTL_S:g} s")


class _Run:
    """Sends the phases of one run and reads back when each task ran."""

    def __init__(self, session: BenchSession, worker: _Worker, queue: Any,
                 spec: PoolSpec) -> None:
        self.session = session
        self.worker = worker
        self.queue = queue
        self.spec = spec
        self.done: dict[str, dict[str, Any]] = {}
        self.sent_at: dict[str, float] = {}
        self.tasks: dict[str, str] = {}  # task id -> task name
        self.solo: dict[str, dict[str, float]] = {}

    def send(self, call: BatchCall) -> str:
        task_id = str(uuid.uuid4())
        self.sent_at[task_id] = time.time()
        self.tasks[task_id] = call.task
        self.session.sender.send_task(
            call.task, args=list(call.args), kwargs=call.kwargs, task_id=task_id,
            queue=self.queue, exchange=self.queue.exchange, routing_key=self.queue.name,
            declare=[self.queue], expires=_QUEUE_TTL_S, ignore_result=True,
            connection=self.session.connection)
        return task_id

    def wait(self, ids: set[str], timeout_s: float, what: str) -> None:
        """Until every task of ``ids`` is done; BenchError when the worker dies, the deadline
        passes or nothing finishes for ``_STUCK_S``."""
        deadline = time.monotonic() + timeout_s
        progress = time.monotonic()
        waiting = set(ids) - set(self.done)
        while waiting:
            for event in self.worker.events():
                if event["event"] == "done" and event["id"] not in self.done:
                    self.done[event["id"]] = event
                    waiting.discard(event["id"])
                    progress = time.monotonic()
            if not waiting:
                return
            self.worker.check_alive(what)
            now = time.monotonic()
            if now > deadline or now - progress > _STUCK_S:
                tail = " | ".join(self.worker.log_tail(2))
                raise BenchError(f"{self.spec.label}: {len(waiting)} of {len(ids)} tasks "
                                 f"({what}) not done after {timeout_s:g} s, none for "
                                 f"{now - progress:.0f} s; the worker's log ends: {tail}")
            time.sleep(0.02)

    def ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            for event in self.worker.events():
                if event["event"] == "ready":
                    return event
            self.worker.check_alive("starting")
            time.sleep(0.05)
        raise BenchError(f"{self.spec.label}: the worker did not start within "
                         f"{_READY_TIMEOUT_S:g} s: {' | '.join(self.worker.log_tail())}")

    def start(self, calls: Sequence[BatchCall], extra: Sequence[BatchCall] = ()) -> bool:
        """Wait for the worker, check the task names, warm it up; whether it is patched."""
        ready = self.ready()
        if not ready.get("guarded"):
            raise BenchError(f"{self.spec.label}: the egress guard is not active in the worker "
                             "(a sitecustomize on its PYTHONPATH runs first?): not sending tasks")
        if ready.get("max_connections_set"):
            note = (f"{self.spec.label}: the worker's Redis connection pool was raised to "
                    f"{ready['max_connections_set']} (broker_transport_options max_connections;"
                    " kombu's default of 10 makes acks fail with MaxConnectionsError when "
                    "many greenlets ack at once): set it in your app too")
            self.session.notes.append(note)
        names = {c.task for c in [*calls, *extra]}
        if unknown := sorted(names - set(ready["tasks"])):
            raise BenchError(f"{unknown[0]!r} is not a task of {self.session.app!r}")
        warm = {self.send(calls[i % len(calls)])
                for i in range(min(self.spec.concurrency, len(calls)))}
        self.wait(warm, 120.0 + len(warm), "warm-up")
        return bool(ready["patched"])

    def measure(self, calls: Sequence[BatchCall], timeout_s: float | None) -> RunFigures:
        patched = self.start(calls)
        timeout = timeout_s or 120.0 + len(calls) * 0.5
        distinct = list({c.task: c for c in calls}.values())
        solo_ids = []
        for _ in range(_SOLO_ROUNDS):
            for call in distinct:
                task_id = self.send(call)
                self.wait({task_id}, timeout, "solo")
                solo_ids.append(task_id)
        service_s = statistics.fmean(self.done[i]["end"] - self.done[i]["start"]
                                     for i in solo_ids)
        self.solo = _solo_figures({i: self.done[i] for i in solo_ids},
                                  {i: self.tasks[i] for i in solo_ids})
        pid = self.worker.proc.pid
        services = self.session.env.services_pid if self.session.env else None
        with TreeSampler(pid) as sampler:
            cpu0, machine0 = cpu_seconds(pid), machine_jiffies()
            services0 = cpu_seconds(services) if services else 0.0
            ids = [self.send(call) for call in calls]
            self.wait(set(ids), timeout, "batch")
            cpu_s = cpu_seconds(pid) - cpu0
            machine1 = machine_jiffies()
            services_s = cpu_seconds(services) - services0 if services else None
        self._note_critical()
        busy = (machine1[0] - machine0[0]) / max(1, machine1[1] - machine0[1])
        return self._figures(ids, service_s, cpu_s, sampler, patched=patched, busy=busy,
                             services_s=services_s)

    def mixed(self, calls: Sequence[BatchCall], cpu_call: BatchCall, wave: int,
              rounds: int) -> MixedFigures:
        """Rounds of two waves of ``wave`` I/O tasks sent evenly over ``_WAVE_SPREAD_S``, the
        second with ``cpu_call`` sent halfway: what one CPU-bound task does to the tasks
        that share its worker, some waiting on their service and some arriving meanwhile."""
        self.start(calls, [cpu_call])
        without: list[float] = []
        with_cpu: list[float] = []
        cpu_runs: list[float] = []
        gap = _WAVE_SPREAD_S / wave
        for index in range(rounds * 2):
            ids, cpu_id = [], None
            for i in range(wave):
                if index % 2 and i == wave // 2:
                    cpu_id = self.send(cpu_call)
                ids.append(self.send(calls[(index * wave + i) % len(calls)]))
                time.sleep(gap)
            self.wait(set(ids) | ({cpu_id} if cpu_id else set()), 120.0 + wave, "mixed")
            latencies = [(self.done[i]["end"] - self.sent_at[i]) * 1000 for i in ids]
            (with_cpu if cpu_id else without).extend(latencies)
            if cpu_id:
                event = self.done[cpu_id]
                cpu_runs.append((event["end"] - event["start"]) * 1000)
        self._note_critical()
        return MixedFigures(self.spec.label, cpu_call.task, wave, rounds,
                            _latency_figures(sorted(without)), _latency_figures(sorted(with_cpu)),
                            statistics.fmean(cpu_runs))

    def _note_critical(self) -> None:
        """A CRITICAL line in the worker's log (a lost ack, say) is worth the user's eye."""
        try:
            with open(self.worker.log_path, encoding="utf-8", errors="replace") as fh:
                critical = [line.strip() for line in fh if "CRITICAL" in line]
        except OSError:
            return
        if critical:
            self.session.notes.append(f"{self.spec.label}: {len(critical)} CRITICAL lines in "
                                      f"the worker's log, the first: {critical[0][:200]}")

    def _figures(self, ids: list[str], service_s: float, cpu_s: float, sampler: TreeSampler,
                 *, patched: bool, busy: float, services_s: float | None) -> RunFigures:
        spec = self.spec
        every = ids
        first_sent = min(self.sent_at[i] for i in every)
        last_end = max(self.done[i]["end"] for i in every)
        wall = last_end - first_sent
        latencies = sorted((self.done[i]["end"] - self.sent_at[i]) * 1000 for i in ids)
        failed = [self.done[i] for i in every if self.done[i]["state"] != "SUCCESS"]
        throughput = len(every) / wall
        cpu_per_task = cpu_s / len(every)
        little = spec.concurrency / service_s
        ceiling = spec.processes_for_cpu / cpu_per_task if cpu_per_task > 0 else float("inf")
        bound_name, bound = ("concurrency / service time", little) if little <= ceiling else (
            "CPU ceiling", ceiling)
        peak = sampler.peak
        return RunFigures(
            label=spec.label, pool=spec.pool, concurrency=spec.concurrency, sent=len(every),
            completed=len(every), failed=len(failed), wall_s=wall, throughput=throughput,
            latency_p50_ms=_percentile(latencies, 50), latency_p95_ms=_percentile(latencies, 95),
            latency_max_ms=latencies[-1], latency_mean_ms=statistics.fmean(latencies),
            service_ms=service_s * 1000, solo=self.solo,
            memory_mb=peak.pss_mb if peak.pss_mb is not None else peak.rss_mb,
            memory_measure="PSS" if peak.pss_mb is not None else "RSS",
            rss_peak_mb=peak.rss_mb, processes=peak.processes, cpu_s=cpu_s,
            cpu_ms_per_task=cpu_per_task * 1000, little_bound=little, cpu_bound=ceiling,
            bound_name=bound_name, bound=bound, of_bound=throughput / bound, patched=patched,
            machine_busy=busy,
            services_cpu_ms_per_task=None if services_s is None else services_s / len(every) * 1000,
            errors=sorted({f"{e.get('error')}" for e in failed})[:5])


@dataclass
class MixedFigures:
    """The I/O tasks' latency on one worker without and with a CPU-bound task among them."""

    label: str
    cpu_task: str
    wave: int  # I/O tasks per wave
    rounds: int  # pairs of waves: one without, one with the CPU task
    without: dict[str, float]
    with_cpu: dict[str, float]
    cpu_task_run_ms: float  # its task_prerun -> task_postrun, mean over the rounds

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _solo_figures(done: dict[str, dict[str, Any]],
                  names: dict[str, str]) -> dict[str, dict[str, float]]:
    by_task: dict[str, list[dict[str, Any]]] = {}
    for task_id, event in done.items():
        by_task.setdefault(names[task_id], []).append(event)
    return {name: {"run_ms": statistics.fmean((e["end"] - e["start"]) * 1000 for e in events),
                   "cpu_ms": statistics.fmean(e.get("cpu_ms") or 0.0 for e in events)}
            for name, events in sorted(by_task.items())}


def _latency_figures(values: list[float]) -> dict[str, float]:
    return {"p50_ms": _percentile(values, 50), "p95_ms": _percentile(values, 95),
            "max_ms": values[-1]}


def machine_busy(seconds: float) -> float:
    """Share of the machine's CPU time busy over the next ``seconds`` (other processes)."""
    busy0, total0 = machine_jiffies()
    time.sleep(seconds)
    busy1, total1 = machine_jiffies()
    return (busy1 - busy0) / max(1, total1 - total0)


def _percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, round(pct / 100 * len(values) + 0.4999))
    return values[min(rank, len(values)) - 1]


def _endpoint(url: str) -> tuple[str, int | None]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return (parts.hostname or "127.0.0.1", parts.port)


def _redacted(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


@dataclass
class BenchResult:
    """Every run side by side, and the mixed run (one CPU-bound task among I/O tasks)."""

    app: str
    broker: str
    scenario: str | None
    latency_ms: float | None
    count: int
    tasks: list[str]
    cpu_task: str | None
    runs: list[RunFigures]
    mixed: MixedFigures | None
    notes: list[str]
    busy_before: float  # share of the machine's CPU busy in the second before the first run
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)


@contextlib.contextmanager
def _interrupts_cleanly() -> Iterator[None]:
    """SIGTERM ends the bench like Ctrl-C: every ``finally`` runs, no worker stays."""
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_bench(app: str, broker_url: str, pools: Sequence[PoolSpec], tasks: Sequence[str], *,
              count: int, scenario: Scenario | None = None, latency_ms: float | None = None,
              cpu_task: str | None = None, mixed: PoolSpec | None = None,
              django_settings: str | None = None, app_dir: str | None = None) -> BenchResult:
    """Each pool over the same batch, one after the other; then the mixed run."""
    calls = batch_calls(scenario, tasks, count)
    cpu_call = batch_calls(scenario, [cpu_task], 1)[0] if cpu_task else None
    runs: list[RunFigures] = []
    mixed_run = None
    busy_before = machine_busy(1.0)
    with _interrupts_cleanly(), BenchSession(
            app, broker_url, scenario=scenario, django_settings=django_settings,
            app_dir=app_dir, latency_ms=latency_ms) as session:
        for spec in pools:
            runs.append(session.run(spec, calls))
        if mixed is not None and cpu_call is not None:
            mixed_run = session.run_mixed(mixed, calls, cpu_call)
    notes = list(dict.fromkeys(session.notes))  # said once, even when two runs met it
    return BenchResult(app=app, broker=_redacted(broker_url),
                       scenario=scenario.path if scenario else None, latency_ms=latency_ms,
                       count=count, tasks=list(tasks), cpu_task=cpu_task, runs=runs,
                       mixed=mixed_run, notes=notes, busy_before=busy_before)
