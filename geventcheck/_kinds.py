"""Every finding kind an audit report can carry, declared once.

The report schema's ``kind`` enum, the README's table of findings and the kinds
the code emits are all checked against this list by a test, so a new kind
cannot reach users undocumented or invalid. The doctor's findings are not
report findings and have kinds of their own.
"""

from __future__ import annotations

FINDING_KINDS: tuple[str, ...] = (
    "blocking-call",
    "cpu-bound",
    "unsafe-driver",
    "thread-local",
    "global-state",
    "concurrency-divergence",
    "db-connections",
    "unpatched-module",
    "egress",
    "deadlock",
    "timeout",
    "crash",
    "task-error",
    "warm-up",
)

# Kinds the schema declares for consumers but no code emits yet: listed so that the
# test tells "reserved" from "forgotten".
RESERVED_KINDS: frozenset[str] = frozenset({"unpatched-module"})
