"""Per-worker summaries in Redis, so that every replica of a deployment adds up.

One hash per deployment, ``geventcheck:canary:<deployment>``, one field per worker
process (``hostname:pid``) holding its latest JSON summary; the key expires a week after
the last push, so a deployment that is gone leaves nothing behind for long.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

KEY_PREFIX = "geventcheck:canary:"
TTL_S = 7 * 24 * 3600


class StoreError(Exception):
    """The store cannot be reached or read; the message is one line for the user."""


def key_of(deployment: str) -> str:
    return f"{KEY_PREFIX}{deployment}"


def split_url(url: str) -> tuple[str, str | None]:
    """``redis://host:port/db?deployment=NAME`` -> the Redis URL and the deployment."""
    parts = urlsplit(url)
    named = parse_qs(parts.query).get("deployment")
    deployment = named[0] if named else None
    query = "&".join(p for p in parts.query.split("&") if p and
                     not p.startswith("deployment="))
    return urlunsplit(parts._replace(query=query)), deployment


def connect(url: str) -> Any:
    import redis

    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise StoreError(f"{url}: give a redis:// URL")
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)


def push(client: Any, deployment: str, worker: str, summary: dict[str, Any]) -> None:
    key = key_of(deployment)
    pipe = client.pipeline()
    pipe.hset(key, worker, json.dumps(summary, separators=(",", ":")))
    pipe.expire(key, TTL_S)
    pipe.execute()


def deployments(url: str) -> list[str]:
    import redis

    try:
        keys = connect(url).scan_iter(match=f"{KEY_PREFIX}*", count=100)
        return sorted(k.decode()[len(KEY_PREFIX):] for k in keys)
    except redis.RedisError as exc:
        raise StoreError(f"cannot read {url}: {exc}") from None


def read(url: str, deployment: str) -> list[dict[str, Any]]:
    """Every worker's latest summary for the deployment, by worker name."""
    import redis

    try:
        raw = connect(url).hgetall(key_of(deployment))
    except redis.RedisError as exc:
        raise StoreError(f"cannot read {url}: {exc}") from None
    summaries = []
    for worker, value in sorted(raw.items()):
        try:
            summary = json.loads(value)
        except ValueError:
            continue
        if isinstance(summary, dict):
            summaries.append({**summary, "worker": worker.decode()})
    return summaries
