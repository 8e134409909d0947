"""A mail server (aiosmtpd) that records each message and waits before accepting DATA.

Any AUTH succeeds and STARTTLS is offered when the spec asks for it, so a
task's real smtplib or Django mail code runs unchanged against it.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
import time
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from ._log import RequestLog, peer
from ._spec import SmtpService


class SmtpHandler:
    """The aiosmtpd handler: records who sent what to whom."""

    def __init__(self, spec: SmtpService, log: RequestLog) -> None:
        self.spec = spec
        self.log = log

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        arrived = time.time()
        await asyncio.sleep(self.spec.latency_ms / 1000)
        content = envelope.original_content or b""
        message = email.message_from_bytes(content, policy=email.policy.default)
        self.log.record(
            self.spec.name, "smtp", at=arrived,
            method="DATA", mail_from=envelope.mail_from, rcpt_tos=list(envelope.rcpt_tos),
            subject=str(message.get("subject", "")), status=250, client=peer(session.peer),
            size=len(content), tls=session.ssl is not None,
            authenticated=bool(session.authenticated),
        )
        return "250 Message accepted for delivery"


def smtp_factory(
    spec: SmtpService, log: RequestLog, tls: ssl.SSLContext | None
) -> Callable[[], SMTP]:
    """A protocol factory for ``loop.create_server``; one SMTP protocol per connection."""
    handler = SmtpHandler(spec, log)

    def accept_any(*_: Any) -> AuthResult:
        return AuthResult(success=True)

    def make() -> SMTP:
        return SMTP(
            handler,
            hostname="localhost",  # the default, getfqdn(), can wait on DNS
            tls_context=tls if spec.starttls else None,
            auth_require_tls=False,
            authenticator=accept_any,
            enable_SMTPUTF8=True,
            loop=asyncio.get_running_loop(),
        )

    return make
