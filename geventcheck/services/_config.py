"""The parent-to-host wire format: the service specs and file paths as one JSON document.

The host is a fresh interpreter, so the specs cross the process boundary as
JSON and are rebuilt (and so re-checked) on the other side.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ._spec import HttpService, ProxyService, Route, Service, SmtpService

_KINDS: dict[str, type[HttpService] | type[SmtpService] | type[ProxyService]] = {
    "http": HttpService,
    "smtp": SmtpService,
    "proxy": ProxyService,
}


@dataclasses.dataclass(frozen=True)
class HostConfig:
    """Everything the host process needs; ``cert_path`` holds the server cert and key."""

    services: tuple[Service, ...]
    log_path: str
    cert_path: str | None = None

    def dumps(self) -> str:
        return json.dumps({
            "services": [_encode(s) for s in self.services],
            "log_path": self.log_path,
            "cert_path": self.cert_path,
        })

    @classmethod
    def loads(cls, text: str) -> HostConfig:
        data = json.loads(text)
        return cls(
            services=tuple(_decode(s) for s in data["services"]),
            log_path=data["log_path"],
            cert_path=data["cert_path"],
        )


def _encode(service: Service) -> dict[str, Any]:
    kind = next(k for k, cls in _KINDS.items() if isinstance(service, cls))
    return {"kind": kind, **dataclasses.asdict(service)}


def _decode(data: dict[str, Any]) -> Service:
    fields = dict(data)
    kind = fields.pop("kind")
    if kind == "http":
        fields["routes"] = tuple(Route(**r) for r in fields["routes"])
        fields["default"] = Route(**fields["default"])
    if "hosts" in fields:
        fields["hosts"] = tuple(fields["hosts"])
    return _KINDS[kind](**fields)
