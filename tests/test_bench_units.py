"""The bench's arithmetic and input handling, without workers: pool specs, the batch, the
mocked latency, the bound that holds and the targets."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from geventcheck._bench import (
    BenchResult,
    PoolSpec,
    RunFigures,
    _percentile,
    batch_calls,
    parse_pool,
)
from geventcheck._benchtargets import ratios, targets
from geventcheck._scenario import Call, Scenario
from geventcheck._workerenv import with_latency
from geventcheck.services import HttpService, Route, SmtpService


def test_pool_specs_are_pool_colon_concurrency() -> None:
    assert parse_pool("gevent:200") == PoolSpec("gevent", 200)
    assert parse_pool("prefork:8").label == "prefork -c 8"
    for bad in ("gevent", "gevent:", "gevent:-1", "gevent:0", "greenlet:8", "prefork:8x"):
        with pytest.raises(ValueError, match="is not POOL:CONCURRENCY"):
            parse_pool(bad)


def test_the_batch_takes_the_tasks_in_turn_with_their_calls_in_turn() -> None:
    scenario = Scenario(path="s.toml", calls={"a": (Call((1,)), Call((2,), {"k": 3}))})
    calls = batch_calls(scenario, ["a", "b"], 5)
    assert [(c.task, c.args, c.kwargs) for c in calls] == [
        ("a", (1,), {}), ("b", (), {}), ("a", (2,), {"k": 3}), ("b", (), {}), ("a", (1,), {})]


def test_latency_replaces_every_http_route_delay_and_jitter() -> None:
    http = HttpService("llm", (Route("POST", "/v1/*", latency_ms=280, jitter_ms=60),
                               Route("GET", "/health", latency_ms=0)))
    smtp = SmtpService("mail", latency_ms=120)
    llm, mail = with_latency((http, smtp), 200)
    assert isinstance(llm, HttpService)
    assert [(r.latency_ms, r.jitter_ms) for r in llm.routes] == [(200, 0), (200, 0)]
    assert llm.default == http.default and mail == smtp
    assert with_latency((http,), None) == (http,)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (_percentile(values, 50), _percentile(values, 95), _percentile([7.0], 95)) == \
        (50.0, 95.0, 7.0)


def _run(pool: str, concurrency: int, throughput: float, memory: float,
         **extra: Any) -> RunFigures:
    figures: dict[str, Any] = {
        "label": f"{pool} -c {concurrency}", "pool": pool, "concurrency": concurrency,
        "sent": 10, "completed": 10, "failed": 0, "wall_s": 1.0, "throughput": throughput,
        "latency_p50_ms": 1.0, "latency_p95_ms": 2.0, "latency_max_ms": 3.0,
        "latency_mean_ms": 1.5, "service_ms": 200.0, "solo": {}, "memory_mb": memory,
        "memory_measure": "PSS", "rss_peak_mb": memory, "processes": 1, "cpu_s": 1.0,
        "cpu_ms_per_task": 5.0, "little_bound": 100.0, "cpu_bound": 200.0,
        "bound_name": "concurrency / service time", "bound": 100.0,
        "of_bound": throughput / 100.0, "patched": pool == "gevent", "machine_busy": 0.5,
        "services_cpu_ms_per_task": None}
    return RunFigures(**{**figures, **extra})


def _result(*runs: RunFigures) -> BenchResult:
    return BenchResult(app="a", broker="redis://", scenario=None, latency_ms=200, count=10,
                       tasks=["t"], cpu_task=None, runs=list(runs), mixed=None, notes=[],
                       busy_before=0.0)


def test_targets_compare_the_last_gevent_run_with_the_first_prefork_run() -> None:
    prefork = _run("prefork", 8, 40.0, 400.0)
    passing = _run("gevent", 200, 95.0, 60.0)
    verdicts = {t.name: (t.measured, t.passed) for t in targets(_result(prefork, passing))}
    assert verdicts == {
        "throughput gevent -c 200 vs prefork -c 8": ("2.4x", False),
        "memory gevent -c 200 vs prefork -c 8": ("0.15x", True),
        "gevent -c 200 of its bound (concurrency / service time)": ("95%", True),
    }
    fast = dataclasses.replace(passing, throughput=240.0, of_bound=0.8)
    verdicts = {t.name: t.passed for t in targets(_result(prefork, fast))}
    assert verdicts["throughput gevent -c 200 vs prefork -c 8"] is True
    assert verdicts["gevent -c 200 of its bound (concurrency / service time)"] is False
    assert ratios(fast, prefork)["throughput_x"] == 6.0
    # without a prefork baseline there is nothing to compare against
    assert [t.name for t in targets(_result(passing))] == [
        "gevent -c 200 of its bound (concurrency / service time)"]
