"""``audit --shard I/N``: which tasks one machine of a CI matrix audits.

A task's shard depends on its name only (rendezvous hashing: the shard whose
hash of ``name`` is highest), never on its position among the tasks, so adding
or removing a task moves no other task, and going from N to N+1 shards moves
only the tasks the new shard takes. Imported by the audited child too: no
gevent, no click.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_FORM = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, name: str) -> bool:
        """True when this shard audits the task ``name``."""
        return shard_of(name, self.count) == self.index


def parse(text: str) -> Shard:
    """``"2/3"`` -> Shard(2, 3); ValueError with a one-line reason otherwise."""
    match = _FORM.match(text)
    if not match:
        raise ValueError(f"expected I/N (say 1/3), got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise ValueError(f"the number of shards must be at least 1, got {text!r}")
    if not 1 <= index <= count:
        raise ValueError(f"the shard must be between 1 and {count}, got {text!r}")
    return Shard(index, count)


def _weight(name: str, index: int) -> int:
    digest = hashlib.sha256(f"{index}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def shard_of(name: str, count: int) -> int:
    """The shard (1-based) that audits the task ``name`` when there are ``count`` shards."""
    return max(range(1, count + 1), key=lambda i: _weight(name, i))
