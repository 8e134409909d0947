"""Hunting an interleaving that makes concurrent copies of a task disagree.

A schedule is a list of small delays per copy: before its k-th cooperative
wait (a socket read or write, a sleep), copy i first sleeps ``schedule[i][k]``
ms. Different delays change which copy runs when, as real service latencies
do. Hypothesis searches schedules for one whose results differ from the solo
runs, then shrinks it to the smallest, which the finding prints with the seed
that finds it again (``--explore-seed``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gevent
import greenlet
from gevent.monkey import get_original

from .._model import Finding
from ._divergence import divergence_finding, first_divergence

MAX_DELAY_MS = 20
MAX_WAITS = 8  # delays drawn per copy; later waits run undelayed
_SOCKET_METHODS = ("recv", "recv_into", "send", "sendall", "connect")

Schedule = list[list[int]]
RunCopies = Callable[[dict[Any, int]], list[dict[str, Any]]]


class _Injector:
    """Sleeps before a copy's next wait, as its schedule says."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.copy_of: dict[Any, int] = {}
        self.waits: dict[int, int] = {}

    def before_wait(self) -> None:
        copy = self.copy_of.get(greenlet.getcurrent())
        if copy is None or copy >= len(self.schedule):
            return
        k = self.waits.get(copy, 0)
        self.waits[copy] = k + 1
        delays = self.schedule[copy]
        if k < len(delays) and delays[k]:
            gevent.sleep(delays[k] / 1000)


@contextmanager
def _injecting(injector: _Injector) -> Iterator[None]:
    """Wrap the cooperative waits of patched code for the duration of one run."""
    from gevent import _socket3

    cls = _socket3.socket
    saved = {name: getattr(cls, name) for name in _SOCKET_METHODS if hasattr(cls, name)}
    patched_sleep = time.sleep

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        def delayed(*args: Any, **kwargs: Any) -> Any:
            injector.before_wait()
            return func(*args, **kwargs)

        return delayed

    for name, func in saved.items():
        setattr(cls, name, wrap(func))
    if patched_sleep is not get_original("time", "sleep"):
        time.sleep = wrap(patched_sleep)
    try:
        yield
    finally:
        for name, func in saved.items():
            setattr(cls, name, func)
        time.sleep = patched_sleep


def explore(run_copies: RunCopies, solo_outcomes: list[dict[str, Any]], copies: int, *,
            examples: int, seed: int) -> tuple[Schedule, dict[str, Any], dict[str, Any]] | None:
    """The smallest schedule found whose copies disagree with a solo run, or None.

    ``run_copies(copy_of)`` runs the copies once; it must record each copy's greenlet in
    ``copy_of`` (greenlet -> copy index) as it spawns them.
    """
    from hypothesis import HealthCheck, Phase, find, settings
    from hypothesis import strategies as st
    from hypothesis.errors import NoSuchExample

    found: dict[str, Any] = {}
    budget = [examples * 6]  # runs in all, shrinking included

    def diverges(schedule: Schedule) -> bool:
        if budget[0] <= 0:
            return False
        budget[0] -= 1
        injector = _Injector(schedule)
        with _injecting(injector):
            outcomes = run_copies(injector.copy_of)
        hit = first_divergence(solo_outcomes, outcomes)
        if hit is not None:
            found["hit"] = hit
        return hit is not None

    strategy = st.lists(st.lists(st.integers(0, MAX_DELAY_MS), max_size=MAX_WAITS),
                        min_size=copies, max_size=copies)
    try:
        schedule = find(strategy, diverges, random=random.Random(seed), settings=settings(
            max_examples=examples, database=None, deadline=None,
            phases=[Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck)))
    except NoSuchExample:
        return None
    diverges(schedule)  # the shrunk schedule's own outcome, for the message
    copy, solo = found["hit"]
    return schedule, copy, solo


def describe(schedule: Schedule) -> str:
    parts = []
    for copy, delays in enumerate(schedule):
        waits = [f"+{d} ms before wait {k + 1}" for k, d in enumerate(delays) if d]
        if waits:
            parts.append(f"copy {copy + 1}: " + ", ".join(waits))
    return "; ".join(parts) or "no delays at all (the copies' natural interleaving)"


def exploration_finding(copies: int, schedule: Schedule, copy: dict[str, Any],
                        solo: dict[str, Any], seed: int) -> Finding:
    finding = divergence_finding(copies, copy, solo, how=" under the schedule "
                                 f"[{describe(schedule)}] (--explore-seed {seed})")
    return finding
