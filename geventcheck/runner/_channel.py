"""The child's private line to the parent: JSON lines on a pipe of its own.

Tasks may print, write to fd 1 or replace ``sys.stdout``: none of that reaches
this pipe. Writes take a native lock because the monitor thread also reports.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import IO, Any


class ChildChannel:
    def __init__(self, fd: int) -> None:
        from gevent.monkey import get_original

        # Close-on-exec: a process a task starts must not hold the parent's line open.
        os.set_inheritable(fd, False)
        self._fd = fd
        self._lock = get_original("_thread", "allocate_lock")()
        self._write = get_original("os", "write")

    def send(self, event: str, **data: Any) -> None:
        line = (json.dumps({"event": event, **data}, default=str) + "\n").encode()
        with self._lock:
            view = memoryview(line)
            while view:
                written = self._write(self._fd, view)
                view = view[written:]


def read_events(stream: IO[bytes]) -> Iterator[dict[str, Any]]:
    """Events as the child sent them; a torn last line (the child died mid-write) is dropped."""
    for raw in stream:
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if isinstance(event, dict) and "event" in event:
            yield event


def make_pipe() -> tuple[int, int]:
    """Both ends close-on-exec: ``pass_fds`` hands the write end to the child alone, so
    nothing else the parent starts (the services) inherits it."""
    return os.pipe()
