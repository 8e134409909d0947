"""The canary: geventcheck's hub watch, left on in production gevent workers.

Switch it on with one line next to the app::

    import geventcheck.canary
    geventcheck.canary.install(app)        # or install(app, redis="redis://...")

or with ``GEVENTCHECK_CANARY=1`` in the worker's environment: the ``celery`` command
loads geventcheck's command plugin at start-up, which adds the bootstep to the app it
loads. Settings come from ``GEVENTCHECK_CANARY_*`` variables (see ``_config``). On a
worker that is not ``-P gevent`` it logs one line and does nothing.

Per task it keeps hub stalls with the call and the line that made them, counts, and the
module globals the task's code shares across greenlets; it serves Prometheus metrics,
logs each blocking event as a JSON line, and pushes per-task summaries to Redis, where
``geventcheck report --from redis://...`` adds up every replica of a deployment.
"""

from __future__ import annotations

import logging
from typing import Any

from ._config import CanaryConfig, ConfigError, env_enabled, from_env

__all__ = ["CanaryConfig", "install", "install_env_hook"]

log = logging.getLogger("geventcheck.canary")


def install(app: Any, **settings: Any) -> bool:
    """Add the canary to ``app``'s workers; True when it is on. Keywords override the
    ``GEVENTCHECK_CANARY_*`` variables (``threshold_ms``, ``port``, ``redis``, ...)."""
    try:
        config = from_env(**settings)
    except ConfigError as exc:
        log.error("geventcheck canary: %s; the canary is off", exc)
        return False
    from ._step import attach

    attach(app, config)
    return True


def install_env_hook() -> None:
    """``GEVENTCHECK_CANARY=1``: install the canary on the app the celery command loads,
    before the worker is built (the ``celeryd_init`` signal). Called when the celery
    command loads geventcheck's command plugin."""
    if not env_enabled():
        return
    from celery import signals

    def on_worker_init(sender: Any = None, instance: Any = None, **_: Any) -> None:
        if instance is not None:
            install(instance.app)

    signals.celeryd_init.connect(on_worker_init, weak=False,
                                 dispatch_uid="geventcheck.canary.env")
