"""An I/O-bound Celery app for benchmarks/canary_overhead.py: each task calls a mocked
HTTP API (loopback, with the latency the benchmark sets), reads its JSON and writes to a
Redis cache, as the
ExamX I/O tasks call their LLM and storage services."""

import os

import redis
import requests
from celery import Celery

app = Celery("canaryload", broker=os.environ["CANARYLOAD_BROKER"])
app.conf.worker_enable_remote_control = False
app.conf.task_default_queue = os.environ["CANARYLOAD_QUEUE"]
# kombu's Redis pool holds 10 connections by default: 200 greenlets acking at once run
# out of them ("Couldn't ack", MaxConnectionsError) and the batch stalls
app.conf.broker_transport_options = {"max_connections": 500}
_session = requests.Session()
_cache = redis.Redis.from_url(os.environ["CANARYLOAD_BROKER"])


@app.task(name="canaryload.call_api", ignore_result=True)
def call_api(url: str, done_key: str) -> int:
    """Call the API, then note it in the cache (the benchmark counts those)."""
    answer = _session.get(url, timeout=30).json()
    _cache.incr(done_key)
    return len(answer["items"])
