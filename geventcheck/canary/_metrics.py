"""The canary's Prometheus metrics (``prometheus_client``, in the default registry).

Names follow Prometheus conventions; labels are bounded by the app's code: task names
and the places in it that block. Stalls no task's code was seen in carry the task label
``(no task)``; geventcheck's own work is left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from .._model import Finding


class _Source(Protocol):
    tallies: dict[str, Any]

    def in_flight(self) -> int: ...

    def iterations(self) -> int: ...

# Stall lengths worth telling apart, from a warning to a worker that stopped serving.
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _RunsCollector:
    """Runs and tasks in flight, read from the canary's tallies when scraped: the task
    signals do no metrics work of their own."""

    def __init__(self, source: _Source) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        runs = CounterMetricFamily("geventcheck_tasks", "Tasks run by this worker, by task "
                                   "and outcome (ok or failed)", labels=["task", "outcome"])
        for name, tally in sorted(self.source.tallies.items()):
            if tally.runs:
                runs.add_metric([name, "ok"], tally.runs - tally.failed)
                runs.add_metric([name, "failed"], tally.failed)
        yield runs
        yield GaugeMetricFamily("geventcheck_tasks_in_flight", "Tasks running in this "
                                "worker now", value=self.source.in_flight())
        yield CounterMetricFamily("geventcheck_hub_loop_iterations", "Iterations of the "
                                  "gevent hub's loop", value=self.source.iterations())


class CanaryMetrics:
    def __init__(self, source: _Source, registry: Any = None) -> None:
        from prometheus_client import REGISTRY, Counter, Histogram

        registry = registry if registry is not None else REGISTRY
        self.stalls = Histogram(
            "geventcheck_hub_stall_seconds",
            "How long the gevent hub could not run, per stall, by the task that stalled it",
            ["task"], buckets=BUCKETS, registry=registry)
        self.blocking = Counter(
            "geventcheck_blocking_events",
            "Stalls over the threshold, by task, kind (blocking-call, cpu-bound, "
            "unsafe-driver), the call that blocked and where in the app",
            ["task", "kind", "call", "where"], registry=registry)
        registry.register(_RunsCollector(source))

    def stall(self, task: str, duration_s: float, findings: tuple[Finding, ...]) -> None:
        self.stalls.labels(task).observe(duration_s)
        for f in findings:
            if f.severity == "error":
                self.blocking.labels(task, f.kind, f.native or f.function or "",
                                     f.where or "").inc()
