"""Results that change when copies of a task run at once (``concurrency-divergence``).

The probe run's copies are compared with the solo runs that had the same
input. What differs between solo runs anyway (ids, timestamps) is learned from
them, and values that look like ids or clock readings are never compared, so
a task that merely returns a uuid or a timestamp is not flagged.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .._model import Finding
from ._probe import ProbeRun

_VOLATILE = "<varies>"
_ID_LIKE = re.compile(
    r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$"  # uuid
    r"|^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}"  # ISO date-time
    r"|^[0-9a-f]{16,}$",  # hex digests and ids
    re.IGNORECASE,
)
_EPOCH = (1e9, 1e10)  # floats in this range are clock readings (2001-2286)


def normalize(value: Any, volatile: Any = None) -> Any:
    """``value`` with the parts that may differ between identical runs blanked."""
    if volatile == _VOLATILE:
        return _VOLATILE
    if isinstance(value, str) and _ID_LIKE.search(value):
        return _VOLATILE
    if isinstance(value, float) and _EPOCH[0] < value < _EPOCH[1]:
        return _VOLATILE
    if isinstance(value, list):
        items = volatile if isinstance(volatile, list) and len(volatile) == len(value) else None
        return [normalize(v, items[i] if items else None) for i, v in enumerate(value)]
    if isinstance(value, dict):
        fields: dict[str, Any] = volatile if isinstance(volatile, dict) else {}
        return {k: normalize(v, fields.get(k)) for k, v in value.items()}
    return value


def learn_volatile(a: Any, b: Any) -> Any:
    """A mask marking where two results of the same input differ."""
    if type(a) is not type(b):
        return _VOLATILE
    if isinstance(a, list):
        if len(a) != len(b):
            return _VOLATILE
        return [learn_volatile(x, y) for x, y in zip(a, b, strict=True)]
    if isinstance(a, dict):
        if a.keys() != b.keys():
            return _VOLATILE
        return {k: learn_volatile(a[k], b[k]) for k in a}
    return None if a == b else _VOLATILE


def _key(outcome: dict[str, Any], volatile: Any) -> str:
    """A comparable fingerprint: the exception type, or the normalized result."""
    error = outcome.get("error")
    if isinstance(error, str):
        return "error " + error.split(":", 1)[0]
    return "result " + json.dumps(normalize(outcome.get("result"), volatile), sort_keys=True,
                                  default=repr)


class Probe:
    kinds: tuple[str, ...] = ("concurrency-divergence",)

    def begin(self, run: ProbeRun) -> None:
        """Nothing to set up: this probe only compares outcomes."""

    def end(self, run: ProbeRun, outcomes: list[dict[str, Any]]) -> list[Finding]:
        found = first_divergence(run.solo_outcomes, outcomes)
        if found is None:
            return []
        copy, solo = found
        return [divergence_finding(run.concurrency, copy, solo)]


def first_divergence(solo_outcomes: list[dict[str, Any]], outcomes: list[dict[str, Any]],
                     ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The first copy whose outcome no solo run with the same input had, and that solo run."""
    by_call: dict[Any, list[dict[str, Any]]] = {}
    for solo in solo_outcomes:
        by_call.setdefault(solo.get("call"), []).append(solo)
    for copy in outcomes:
        solos = by_call.get(copy.get("call"), [])
        if not solos or "wall_ms" not in copy:
            continue
        volatile = None
        ok = [s for s in solos if not s.get("error")]
        if len(ok) >= 2:
            volatile = learn_volatile(ok[0].get("result"), ok[1].get("result"))
        if _key(copy, volatile) not in {_key(s, volatile) for s in solos}:
            return copy, solos[0]
    return None


def divergence_finding(concurrency: int, copy: dict[str, Any], solo: dict[str, Any],
                       how: str = "") -> Finding:
    alone = solo.get("error") or repr(solo.get("result"))
    together = copy.get("error") or repr(copy.get("result"))
    return Finding(
        "concurrency-divergence", "error",
        f"with {concurrency} copies running at once{how} it gave {together[:200]}, where "
        f"alone, with the same input, it gave {alone[:200]}: state it relies on is shared "
        "between concurrent tasks",
        file=copy.get("file"), line=copy.get("line"), function=copy.get("function"),
        fix="find the shared state (module globals, class attributes, caches, "
            "thread-locals created before patching) and make it per task",
    )
