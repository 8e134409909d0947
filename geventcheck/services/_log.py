"""The request log: one JSON object per line, written by the host, read by the parent.

A line is flushed as soon as it is written so the parent can see traffic
while the audited task is still running; a half-written last line is skipped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any


class RequestLog:
    """Appends records; every record gets the service name and a Unix ``time``."""

    def __init__(self, path: str) -> None:
        self._file: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def record(self, service: str, kind: str, at: float | None = None, **fields: Any) -> None:
        """One line; ``at`` (Unix time) is when it began, now if not given."""
        when = time.time() if at is None else at
        line = {"service": service, "kind": kind, "time": round(when, 6), **fields}
        self._file.write(json.dumps(line, default=str) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_log(path: Path) -> list[dict[str, Any]]:
    """The complete lines written so far, parsed."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line]


def peer(address: Any) -> str:
    """``host:port`` from a socket peer name (``?`` when the peer is already gone)."""
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return "?"
