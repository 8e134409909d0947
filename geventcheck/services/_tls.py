"""A throwaway certificate authority, so clients verify TLS for real against the mocks.

The audited process trusts only ``ca.pem`` (via SSL_CERT_FILE and friends);
the server certificate covers loopback and every host name a mock stands in for.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Iterable
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    ca_bundle: Path
    server_pem: Path  # certificate chain and private key, in one file


def make_tls_files(directory: Path, hosts: Iterable[str]) -> TlsFiles:
    """Write a fresh CA and a server certificate valid for 127.0.0.1, localhost and ``hosts``."""
    import trustme

    names = list(dict.fromkeys(["127.0.0.1", "localhost", *hosts]))
    ca = trustme.CA(organization_name="geventcheck mock services")
    cert = ca.issue_cert(*names)
    files = TlsFiles(directory / "ca.pem", directory / "server.pem")
    ca.cert_pem.write_to_path(str(files.ca_bundle))
    cert.private_key_and_cert_chain_pem.write_to_path(str(files.server_pem))
    return files


def server_context(server_pem: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_pem)
    return context
