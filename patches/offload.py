"""Run a blocking native call in gevent's hub threadpool, for libraries with no cooperative mode.

pylibmc, confluent-kafka, pycurl and native SDKs wait in C and never yield. Running the
call in a thread turns it into a cooperative wait for the calling greenlet: the hub keeps
serving the other tasks. ``max_threads`` bounds how many such calls run at once (the others
wait cooperatively for a slot), so a burst of tasks cannot spawn a thread each.

The call runs in another OS thread: it must not touch greenlet-local state, and the library
must allow calls from several threads (most C clients do, one handle per call or per thread).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, overload

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_MAX_THREADS = 10

MESSAGES = {
    "max-threads": "offload: max_threads must be a positive integer (got {value!r})",
}

_slots: dict[int, Any] = {}


def _slot(max_threads: int) -> Any:
    """One bounded semaphore per bound: calls with the same bound share it."""
    from gevent.lock import BoundedSemaphore

    if max_threads not in _slots:
        _slots[max_threads] = BoundedSemaphore(max_threads)
    return _slots[max_threads]


def _check(max_threads: int) -> None:
    if not isinstance(max_threads, int) or isinstance(max_threads, bool) or max_threads <= 0:
        raise ValueError(MESSAGES["max-threads"].format(value=max_threads))


def run_blocking(fn: Callable[..., R], *args: Any,
                 max_threads: int = DEFAULT_MAX_THREADS, **kwargs: Any) -> R:
    """``fn(*args, **kwargs)`` in the hub's threadpool; the caller waits cooperatively.

    Exceptions raised by ``fn`` are raised here, with their traceback.
    """
    _check(max_threads)
    import gevent

    hub = gevent.get_hub()
    pool = hub.threadpool
    pool.maxsize = max(pool.maxsize, max_threads)
    with _slot(max_threads):
        return pool.apply(fn, args, kwargs)  # type: ignore[no-any-return]


@overload
def offload(fn: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def offload(
    *, max_threads: int = DEFAULT_MAX_THREADS,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def offload(fn: Callable[P, R] | None = None, /, *,
            max_threads: int = DEFAULT_MAX_THREADS) -> Any:
    """Decorator: every call of the function runs through ``run_blocking``.

    ``@offload`` or ``@offload(max_threads=4)``.
    """
    _check(max_threads)

    def wrap(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            return run_blocking(func, *args, max_threads=max_threads, **kwargs)

        return call

    return wrap(fn) if fn is not None else wrap


def patch() -> None:
    """Nothing to patch process-wide: offload is applied per call. Here for the registry."""


def is_applied() -> bool:
    return True
