"""What keeps ``doctor --live`` away from the app's own messages.

The live worker is the user's command line minus everything that would reach beyond
one private queue: its ``-Q``/``-X`` queues, ``--purge``, embedded beat, events,
state and pid files. It consumes only ``geventcheck.doctor.<uuid>``, a non-durable,
auto-deleted queue with a TTL, and the probe message expires. Afterwards the queue is
deleted, with anything left in it (and, on Redis, a probe the worker took but never
acknowledged), so nothing stays in the broker.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

QUEUE_PREFIX = "geventcheck.doctor."
QUEUE_ENV = "GEVENTCHECK_LIVE_QUEUE"
TTL_ENV = "GEVENTCHECK_LIVE_TTL"

# `celery worker` options the live worker must not get from the user's command line.
_DROPPED = frozenset({
    "queues", "exclude_queues",      # it consumes the private queue only
    "purge",                         # would empty the app's queues
    "beat", "schedule_filename", "scheduler",  # would send the app's periodic tasks
    "task_events",                   # would publish events on the app's broker
    "detach", "statedb", "pidfile", "logfile", "hostname",  # the deployment's files
})


def new_queue_name() -> str:
    return f"{QUEUE_PREFIX}{uuid.uuid4().hex}"


def private_queue(name: str, ttl_s: float) -> Any:
    """The one declaration both the doctor and its worker use (RabbitMQ refuses a mismatch)."""
    from kombu.entity import Exchange, Queue

    exchange = Exchange(  # type: ignore[no-untyped-call]
        name, type="direct", durable=False, auto_delete=True)
    return Queue(  # type: ignore[no-untyped-call]
        name, exchange, routing_key=name, durable=False, auto_delete=True,
        expires=ttl_s, message_ttl=ttl_s)


def _worker_options() -> tuple[dict[str, tuple[str, bool]], dict[str, tuple[str, bool]]]:
    """Long and short option spellings of `celery worker` -> (parameter name, is a flag)."""
    from celery.bin.worker import worker

    long: dict[str, tuple[str, bool]] = {}
    short: dict[str, tuple[str, bool]] = {}
    for param in worker.params:
        flag = bool(getattr(param, "is_flag", False))
        for opt in (*param.opts, *param.secondary_opts):
            if opt.startswith("--"):
                long[opt] = (str(param.name), flag)
            elif len(opt) == 2:
                short[opt[1]] = (str(param.name), flag)
    return long, short


def private_worker_args(worker_args: list[str] | tuple[str, ...]) -> list[str]:
    """The user's worker arguments without the options that reach beyond the private queue.

    Everything else, the pool option above all, is kept as written: Celery's patching
    scan must see the same tokens the deployment's command line gives it.
    """
    long, short = _worker_options()
    args = list(worker_args)
    out: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if token.startswith("--") and token != "--":
            name, equals, _ = token.partition("=")
            param, flag = long.get(name, ("", True))
            value_follows = not flag and not equals
            if param not in _DROPPED:
                out.append(token)
                if value_follows and i < len(args):
                    out.append(args[i])
            i += 1 if value_follows else 0
        elif token.startswith("-") and len(token) > 1:
            letters, kept, takes_next, dropped = token[1:], "", False, False
            for pos, letter in enumerate(letters):
                param, flag = short.get(letter, ("", True))
                if flag:
                    kept += "" if param in _DROPPED else letter
                    continue
                value = letters[pos + 1:]  # a value option ends the group: the rest is its value
                dropped = param in _DROPPED
                kept += "" if dropped else letter + value
                takes_next = not value
                break
            if kept:
                out.append(token if kept == letters else "-" + kept)
            if takes_next and i < len(args):
                if not dropped:
                    out.append(args[i])
                i += 1
        else:
            out.append(token)
    return out


def dropped_environment() -> tuple[str, ...]:
    """`CELERY_WORKER_*` variables click would read for the dropped options."""
    long, _ = _worker_options()
    return tuple(sorted({f"CELERY_WORKER_{name.upper()}" for name, _ in long.values()
                         if name in _DROPPED}))


def clean_up(connection: Any, queue: Any) -> None:
    """Delete the private queue with whatever is in it, and a probe taken but never acked."""
    channel = connection.default_channel
    unacked_key = getattr(channel, "unacked_key", None)
    if unacked_key and hasattr(channel, "client"):  # Redis: kombu keeps it in a hash
        client = channel.client
        for tag, raw in client.hgetall(unacked_key).items():
            try:
                _, exchange, routing_key = json.loads(raw)
            except (ValueError, TypeError):
                continue
            if queue.name in (exchange, routing_key):
                client.zrem(channel.unacked_index_key, tag)
                client.hdel(unacked_key, tag)
    queue(channel).delete()
    deadlines = getattr(channel, "keyprefix_binding_deadlines", None)
    if unacked_key and deadlines and hasattr(channel, "client"):
        # kombu's sweep list for expiring bindings: the binding table itself is gone
        channel.client.zrem(deadlines, queue.exchange.name)
