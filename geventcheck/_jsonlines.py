"""JSON lines between a probe inside a real worker and the process that started it.

The probe appends each event with one ``write`` (whole lines, never interleaved); the
parent reads what is new since its last read and leaves a torn last line for the next.
Shared by ``audit --mode worker`` and ``bench``.
"""

from __future__ import annotations

import json
import os
from typing import Any


def append(path: str, event: str, **data: Any) -> None:
    """One JSON line, appended with one write."""
    line = json.dumps({"event": event, **data}, default=repr) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class Reader:
    """The events of one file, each handed out once."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> list[dict[str, Any]]:
        """Lines written since the last call (a torn last line waits)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [json.loads(line) for line in data[:end].splitlines() if line.strip()]


def last_lines(path: str, lines: int) -> list[str]:
    """The last lines of a worker's log, for a message; none when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [line.rstrip() for line in fh.readlines()[-lines:]]
    except OSError:
        return []
