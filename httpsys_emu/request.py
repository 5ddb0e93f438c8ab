"""What an application learns about a request, whichever way it is delivered.

The same facts reach an in-process handler (as this object), a registered process and a static
forward (as the request line plus the `X-Forwarded-*` / `X-Client-Cert*` headers the proxy sets).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

from .urlprefix import UrlPrefix


@dataclass(frozen=True)
class ConnectionInfo:
    """Facts fixed for the life of one client connection."""

    connection_id: int
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    sni: str | None = None
    tls_version: str | None = None
    cipher: str | None = None
    client_cert_der: bytes | None = None

    @property
    def client_cert_thumbprint(self) -> str | None:
        """SHA-1 of the client certificate's DER, upper-case hex, as Windows shows thumbprints."""
        if self.client_cert_der is None:
            return None
        return hashlib.sha1(self.client_cert_der).hexdigest().upper()

    @property
    def client_cert_pem(self) -> str | None:
        if self.client_cert_der is None:
            return None
        b64 = base64.b64encode(self.client_cert_der).decode("ascii")
        lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
        return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


@dataclass(frozen=True)
class RequestInfo:
    """One routed request: the head as received plus where routing sent it."""

    conn: ConnectionInfo
    request_id: int
    method: str
    target: str                      # the raw request target as the client sent it
    version: str                     # "1.0" or "1.1"
    headers: tuple[tuple[str, str], ...]
    host: str                        # the routing host (from an absolute target or Host)
    path: str                        # the canonical path the router matched
    query: str                       # the raw query (bytes as latin-1), without '?', '' if none
    prefix: UrlPrefix
    authority: str = ""              # the validated Host (or absolute-form authority) routed on
    scheme: str = "https"
    upgrade: str | None = None
    keep_alive: bool = True
    extra: dict[str, object] = field(default_factory=dict, compare=False)

    def header(self, name: str) -> str | None:
        """The first header with this name (case-insensitive), or None."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        lname = name.lower()
        return [value for key, value in self.headers if key.lower() == lname]
