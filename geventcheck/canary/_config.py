"""The canary's settings: from ``GEVENTCHECK_CANARY_*`` variables or ``install(app, ...)``.

A production worker must not fail to start over a monitoring setting, so a bad value is
one clear log line and the canary stays off; the worker serves as it would without it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ENV = "GEVENTCHECK_CANARY"
DEFAULT_PORT = 9808


class ConfigError(Exception):
    """One line naming the setting and what is wrong with it."""


@dataclass(frozen=True)
class CanaryConfig:
    threshold_ms: float = 50.0  # a stall this long is a blocking event (as the audit's)
    warn_ms: float = 10.0  # shorter stalls are not recorded at all
    # how often the sampler thread wakes to look; None: threshold_ms - warn_ms, so that
    # every stall past the threshold gets a look at least warn_ms into it
    sample_ms: float | None = None
    port: int | None = DEFAULT_PORT  # Prometheus endpoint; None: none (the app serves it)
    redis: str | None = None  # where summaries go; None: not pushed
    deployment: str | None = None  # the summaries' group in Redis; None: the app's name
    push_s: float = 15.0  # how often summaries are pushed
    flush_s: float = 2.0  # how often stalls are digested into metrics, logs and summaries

    def __post_init__(self) -> None:
        for name in ("threshold_ms", "warn_ms", "sample_ms", "push_s", "flush_s"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be more than 0, not {getattr(self, name)!r}")
        if self.warn_ms > self.threshold_ms:
            raise ConfigError(f"warn_ms ({self.warn_ms:g}) must not exceed threshold_ms "
                              f"({self.threshold_ms:g})")
        if self.port is not None and not 0 < self.port < 65536:
            raise ConfigError(f"port must be 1-65535 (0 for no endpoint), not {self.port}")
        if self.redis is not None and not self.redis.startswith(("redis://", "rediss://",
                                                                 "unix://")):
            raise ConfigError(f"redis must be a redis:// URL, not {self.redis!r}")

    @property
    def sample_every_ms(self) -> float:
        if self.sample_ms is not None:
            return self.sample_ms
        return max(self.threshold_ms - self.warn_ms, self.warn_ms / 2)


_NUMBERS = {"THRESHOLD_MS": "threshold_ms", "WARN_MS": "warn_ms", "SAMPLE_MS": "sample_ms",
            "PUSH_S": "push_s", "FLUSH_S": "flush_s"}


def env_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def from_env(environ: Mapping[str, str] = os.environ, **overrides: Any) -> CanaryConfig:
    """The settings from ``GEVENTCHECK_CANARY_*``, then ``overrides`` (install's keywords)."""
    values: dict[str, Any] = {}
    for suffix, name in _NUMBERS.items():
        raw = environ.get(f"{ENV}_{suffix}")
        if raw:
            try:
                values[name] = float(raw)
            except ValueError:
                raise ConfigError(f"{ENV}_{suffix}={raw!r} is not a number") from None
    raw_port = environ.get(f"{ENV}_PORT")
    if raw_port:
        try:
            port = int(raw_port)
        except ValueError:
            raise ConfigError(f"{ENV}_PORT={raw_port!r} is not a port number") from None
        values["port"] = port or None
    for suffix, name in (("REDIS", "redis"), ("DEPLOYMENT", "deployment")):
        if environ.get(f"{ENV}_{suffix}"):
            values[name] = environ[f"{ENV}_{suffix}"]
    known = {f.name for f in dataclasses.fields(CanaryConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown canary setting {unknown[0]!r}; known: "
                          f"{', '.join(sorted(known))}")
    if overrides.get("port") == 0:
        overrides = {**overrides, "port": None}
    return CanaryConfig(**{**values, **overrides})
